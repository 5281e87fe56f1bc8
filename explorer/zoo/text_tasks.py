"""Small templated text-classification tasks for the MiniLM LoRA family (no download).

Each task draws sentences from word lists and templates with a seeded generator, so the data
is identical on every machine.  Train and test sentences use disjoint halves of every word list.  Labels are 0..n_classes-1 with n_classes <= :data:`N_CLASSES`.

- ``sentiment`` (2): a review that is positive or negative;
- ``topic`` (4): sports, food, technology or weather;
- ``question`` (2): a statement or a question;
- ``negation`` (2): an affirmative or a negated preference;
- ``tense`` (2): present or past tense.
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
_TOPICS = {
    "sports": ("the striker scored a late goal", "the team won the final match", "the runner broke the record",
               "the coach praised the defence", "fans cheered in the stadium", "the tennis player served an ace"),
    "food": ("the soup needs more salt", "she baked fresh bread", "the pasta was cooked perfectly",
             "we ordered spicy noodles", "the chef grilled the fish", "he made pancakes for breakfast"),
    "technology": ("the laptop needs a new battery", "the app crashed after the update", "the server is out of memory",
                   "she wrote code for the new chip", "the phone screen is cracked", "the network router restarted"),
    "weather": ("heavy rain is expected tonight", "the wind blew all afternoon", "it will be sunny and warm",
                "snow covered the hills", "a storm is moving north", "fog made the morning cold"),
}
_TOPIC_FRAMES = ("{t}.", "news: {t}.", "today {t}.", "{t}, they said.")
_PEOPLE = ("my sister", "the teacher", "our neighbour", "my friend", "the doctor", "his uncle", "the pilot")
_THINGS = ("coffee", "jazz", "long walks", "old films", "spicy food", "board games", "the sea", "gardening")
_ACTS = (("walk", "walked"), ("cook", "cooked"), ("paint", "painted"), ("travel", "travelled"),
         ("play", "played"), ("study", "studied"), ("clean", "cleaned"), ("work", "worked"))
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
        return pick(_REVIEW).format(s=pick(_SUBJECTS), a=pick(_POS if label else _NEG))
    if name == "topic":
        return pick(_TOPIC_FRAMES).format(t=pick(_TOPICS[list(_TOPICS)[label]]))
    if name == "question":
        p, t = pick(_PEOPLE), pick(_THINGS)
        return f"does {p} enjoy {t}?" if label else f"{p} enjoys {t}."
    if name == "negation":
        p, t = pick(_PEOPLE), pick(_THINGS)
        return f"{p} does not like {t}." if label else f"{p} really likes {t}."
    if name == "tense":
        p, acts, where = pick(_PEOPLE), pick(_ACTS), pick(_PLACES)
        now, past = acts
        return f"{p} {past} {where} yesterday." if label else f"{p} likes to {now} {where} every day."
    raise KeyError(name)


CLASSES: dict[str, tuple[str, ...]] = {
    "sentiment": ("negative", "positive"),
    "topic": tuple(_TOPICS),
    "question": ("statement", "question"),
    "negation": ("affirmative", "negated"),
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
