"""What a page tells its user about input it could not use as asked, instead of staying silent.

- Members of the family left out of an analysis (unreadable, NaN/Inf data): one ``st.warning``
  above the charts naming each (member, file, reason), collapsed into an expander beyond
  :data:`SHOWN_INLINE`.
- Values of a share link that cannot be honoured (an unknown zoo family or layer, a kind of
  source this server does not open, a mode, view or number that is not one): one ``st.warning``
  per parameter naming it, its value and what is shown instead.  The widgets still fall back
  to a default (a link must open *something*); this only makes the switch visible.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import streamlit as st

from explorer.catalog.views import views_for
from explorer.engine.options import CENTERS, MODES
from explorer.present.tables import skipped_table
from explorer.sources.family import Skipped
from explorer.sources.policy import (
    SOURCE_KIND_LABELS,
    allowed_source_kinds,
    source_kind,
)
from explorer.zoo import registry
from ui.families import load_family, split_catalog
from ui.sidebar import K_CHOICES, TAU_RANGE
from ui.state import DEFAULTS, FLAG_VALUES, Selection

#: Skipped members listed in the warning itself; more go into an expander below it.
SHOWN_INLINE = 5
# Session key of the share link's values, kept from the session's first run until checked.
_LINK_KEY = "_link_given"
# Characters that would turn a file name or reason into Markdown formatting.
_MARKDOWN = str.maketrans({c: f"\\{c}" for c in "\\`*_[]<>#$~|"})


def _md(text: str) -> str:
    """``text`` shown literally inside Markdown (file names hold ``_`` and ``*`` often enough)."""
    return text.translate(_MARKDOWN)


def skipped_warning(skipped: Sequence[Skipped]) -> None:
    """One ``st.warning`` naming every member left out of the analysis; nothing when none was.

    Parameters
    ----------
    skipped : sequence of Skipped
        ``Analysis.skipped``: members that could not be read and members with NaN/Inf data.
    """
    table = skipped_table(skipped)
    if table.empty:
        return
    n = len(table)
    head = (f"**{n} member{'s' if n != 1 else ''} of this family {'were' if n != 1 else 'was'} left out of this "
            "analysis**; the charts show the others. Turn on *Strict* in the sidebar to refuse the family instead.")
    if n <= SHOWN_INLINE:
        rows = "\n".join(f"- **{_md(r.member)}** ({_md(r.file)}): {_md(r.reason)}" for r in table.itertuples())
        st.warning(f"{head}\n\n{rows}", icon=":material/warning:")
        return
    st.warning(f"{head} They are listed below.", icon=":material/warning:")
    with st.expander(f"{n} skipped members: member, file, reason"):
        st.dataframe(table, hide_index=True)


def remember_link() -> None:
    """Keep the share link's values on a session's first run, before any widget replaces them.

    Call before :func:`ui.state.init_state`; :func:`link_warnings` reads them once the sidebar
    has decided what it shows.
    """
    if _LINK_KEY not in st.session_state:
        qp = st.query_params
        st.session_state[_LINK_KEY] = {f: qp[f] for f in DEFAULTS if f in qp}


def link_warnings(sel: Selection | None) -> None:
    """One ``st.warning`` per share-link value not honoured by ``sel``; once per session.

    Parameters
    ----------
    sel : Selection or None
        What the sidebar shows; None when no family could be loaded (then only the source is
        checked: the other values cannot be judged without a family).
    """
    given: Mapping[str, str] = st.session_state.get(_LINK_KEY) or {}
    st.session_state[_LINK_KEY] = {}  # a link is reported on the run that opened it, not on every rerun
    for field, value, used, why in unhonoured(given, sel, st.session_state.get("sel_source", "")):
        st.warning(f"This link asks for **{field}** = `{_md(value)}`, which {why}; showing `{_md(used)}` instead.",
                   icon=":material/link_off:")


def unhonoured(given: Mapping[str, str], sel: Selection | None, source_now: str) -> list[tuple[str, str, str, str]]:
    """The share link's values that ``sel`` does not show, each with what it shows and why.

    Parameters
    ----------
    given : mapping field -> value
        The link's query-string values (keys of :data:`ui.state.DEFAULTS`).
    sel : Selection or None
        The selection the sidebar made of them (None: no family loaded).
    source_now : str
        The source the sidebar settled on (used when ``sel`` is None).

    Returns
    -------
    list of (field, value, used instead, reason)
    """
    out = []
    source = sel.source if sel is not None else source_now
    if "source" in given and given["source"].strip() != source:
        out.append(("source", given["source"], source or "no family", _source_reason(given["source"].strip())))
    if sel is None:
        return out
    used = {**sel.query(), "strict": "1" if sel.strict else "0"}
    for field in ("layer", "view", "mode", "center", "tau", "k", "strict"):
        if field not in given or _honoured(field, given[field], sel):
            continue
        out.append((field, given[field], used[field], _reason(field, given[field], sel)))
    return out


def _honoured(field: str, value: str, sel: Selection) -> bool:
    """Whether ``sel`` shows what ``field=value`` asked for (empty view/mode: the default)."""
    text = value.strip()
    if field in ("view", "mode") and not text:
        return True
    if field == "tau":
        x = _number(text)
        return x is not None and abs(x - sel.tau) < 1e-9
    if field == "k":
        x = _number(text)
        return x is not None and x == sel.k
    if field == "strict":
        return FLAG_VALUES.get(text.lower()) == sel.strict
    return text == getattr(sel, field)


def _number(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _source_reason(source: str) -> str:
    """Why the sidebar could not open ``source`` from a link."""
    kind = source_kind(source)
    if kind not in allowed_source_kinds():
        return f"this server does not open (server mode offers no {SOURCE_KIND_LABELS[kind].lower()} sources)"
    if kind == "zoo" and source[4:] not in {r.name for r in registry.list_recipes()}:
        return "is not a built-in family"
    return "cannot be opened here"


def _reason(field: str, value: str, sel: Selection) -> str:
    """Why ``field=value`` from a link is not what ``sel`` shows."""
    text = value.strip()
    if field == "layer":
        _, partial = split_catalog(sel.source)
        if any(g.name == text for g in partial):
            return f"is not held by every model of {sel.source}"
        return f"is not a layer group of {sel.source}"
    if field == "view":
        group = next(g for g in split_catalog(sel.source)[0] if g.name == sel.layer)
        views = views_for(load_family(sel.source, sel.strict), group)
        return f"is not a view of {sel.layer} (its views: {', '.join(views)})"
    if field == "mode":
        return f"is not a mode ({', '.join(MODES)})"
    if field == "center":
        return f"is not a centering ({', '.join(CENTERS)})"
    if field == "strict":
        return "is not on or off (1 or 0)"
    x = _number(text)
    if x is None:
        return "is not a finite number"
    if field == "tau":
        lo, hi = TAU_RANGE
        return f"is outside {lo}–{hi}" if not lo <= x <= hi else "is finer than τ's steps of 0.01"
    return f"is not one of {', '.join(map(str, K_CHOICES))}"
