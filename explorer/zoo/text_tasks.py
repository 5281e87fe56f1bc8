"""Small templated text-classification tasks for the MiniLM LoRA family (no download).

Each task draws sentences from word lists and templates with a seeded generator, so the data
is identical on every machine.  Train and test sentences use disjoint halves of every word list.  Labels are 0..n_classes-1 with n_classes <= :data:`N_CLASSES`.

Version 2.  Version 1's tasks each had a give-away word ("?", "not", "yesterday"...) that the
frozen MiniLM embedding already separates: a classification head alone, with no adapter, scored
1.0 on four of five, so the adapters carried nothing and every projection kept 1.0.  Each task here
is one where the head alone stays far from the adapters (measured with the zoo's recipe, rank 4:
head alone / adapter):

- ``sentiment`` (2): a review, positive or negative — half of them negated ("was not great" is
  negative), so the polarity word alone does not tell (0.60 / 1.00);
- ``agent`` (2): does the dog do it, or is it done to the dog? ("the dog chased the cat", "the cat
  was chased by the dog" against "the cat chased the dog"): both classes use the same words,
  active and passive alike, so only the syntax tells (0.52 / 0.98);
- ``comparison`` (2): is the box the heavier one? ("the box is heavier than the chair", "the chair is
  lighter than the box" against "the box is lighter than the chair"): order and comparative only
  tell together (0.62 / 0.93);
- ``negation`` (2): does the person like the first thing named? ("likes tea but not coffee" against
  "does not like tea but likes coffee"): the same words in another order (0.62 / 1.00);
- ``tense`` (2): present or past, told by the verb's form alone (no time adverb) (0.85 / 1.00).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_CLASSES = 4
N_TRAIN, N_TEST = 256, 128
SEED = 20251205

_SUBJECTS = ("the movie", "the book", "this album", "the show", "the meal", "the trip", "the game", "our stay")
_POS = ("great", "wonderful", "delightful", "excellent", "charming", "superb", "lovely", "brilliant", "fantastic")
_NEG = ("terrible", "awful", "boring", "dreadful", "disappointing", "poor", "horrible", "dull", "painful")
_REVIEW = ("{s} was {a}.", "honestly, {s} was {a}.", "i thought {s} was {a}.", "{s} felt {a} from start to end.")
_PEOPLE = ("my sister", "the teacher", "our neighbour", "my friend", "the doctor", "his uncle", "the pilot")
_THINGS = ("coffee", "jazz", "long walks", "old films", "spicy food", "board games", "the sea", "gardening")
_ACTS = (("walks", "walked"), ("cooks", "cooked"), ("paints", "painted"), ("travels", "travelled"),
         ("plays", "played"), ("studies", "studied"), ("cleans", "cleaned"), ("works", "worked"))
_NEG_REVIEW = ("{s} was not {a}.", "honestly, {s} was not {a}.", "i did not think {s} was {a}.",
               "{s} was never {a}.")
_ANIMALS = ("the cat", "the fox", "the horse", "the goose", "the rabbit", "the bear", "the mouse", "the owl")
_OBJECTS = ("the chair", "the lamp", "the kettle", "the drum", "the bucket", "the suitcase", "the ladder",
            "the basket")
_DEEDS = (("chased", "chased"), ("followed", "followed"), ("pushed", "pushed"), ("watched", "watched"),
          ("bit", "bitten"), ("saw", "seen"))
_PLACES = ("at home", "in the park", "at school", "in the city", "by the river", "at night")


@dataclass(frozen=True)
class TextTask:
    """A task: its name, class names, and train/test sentences with labels."""

    name: str
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]


def _sentence(name: str, label: int, rng: np.random.Generator, part: int) -> str:
    # Train sentences use the even-indexed words of every list, test sentences the odd-indexed
    # ones: test accuracy then measures generalisation to unseen words, not memorisation.
    def pick(seq: tuple) -> object:
        half = seq[part::2] if len(seq) > 1 else seq
        return half[int(rng.integers(len(half)))]

    if name == "sentiment":
        negated = bool(rng.integers(2))
        # Negated, a negative word makes a positive review and the other way round.
        word = pick(_NEG if label else _POS) if negated else pick(_POS if label else _NEG)
        return pick(_NEG_REVIEW if negated else _REVIEW).format(s=pick(_SUBJECTS), a=word)
    if name == "agent":
        # Every sentence names the dog and one other animal, active or passive at random, so
        # neither the words nor the voice tell the label: only who does what to whom.
        other, (past, participle) = pick(_ANIMALS), pick(_DEEDS)
        agent, patient = ("the dog", other) if label else (other, "the dog")
        if rng.integers(2):
            return f"{patient} was {participle} by {agent}."
        return f"{agent} {past} {patient}."
    if name == "comparison":
        other, heavier = pick(_OBJECTS), bool(rng.integers(2))
        word = "heavier" if heavier else "lighter"
        # The box first and "heavier", or the box last and "lighter": the box is the heavier one.
        box_first = heavier == bool(label)
        return f"the box is {word} than {other}." if box_first else f"{other} is {word} than the box."
    if name == "negation":
        p, t, other = pick(_PEOPLE), pick(_THINGS), pick(_THINGS)
        while other == t:  # from the same half of the list, so train and test words stay apart
            other = pick(_THINGS)
        return f"{p} likes {t} but not {other}." if label else f"{p} does not like {t} but likes {other}."
    if name == "tense":
        p, acts, where = pick(_PEOPLE), pick(_ACTS), pick(_PLACES)
        now, past = acts
        return f"{p} {past} {where}." if label else f"{p} {now} {where}."
    raise KeyError(name)


CLASSES: dict[str, tuple[str, ...]] = {
    "sentiment": ("negative", "positive"),
    "agent": ("the dog is acted on", "the dog acts"),
    "comparison": ("the box is lighter", "the box is heavier"),
    "negation": ("dislikes the first", "likes the first"),
    "tense": ("present", "past"),
}


def make_task(name: str) -> TextTask:
    """The task ``name`` (one of :data:`CLASSES`), balanced over its classes."""
    rng = np.random.default_rng([SEED, sorted(CLASSES).index(name)])
    k = len(CLASSES[name])

    def draw(n: int, part: int) -> tuple[tuple[str, int], ...]:
        labels = np.arange(n) % k
        rng.shuffle(labels)
        return tuple((_sentence(name, int(y), rng, part), int(y)) for y in labels)

    return TextTask(name, CLASSES[name], draw(N_TRAIN, 0), draw(N_TEST, 1))


TASK_NAMES: tuple[str, ...] = tuple(CLASSES)
