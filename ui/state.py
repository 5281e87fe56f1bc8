"""The selection, and how it lives in session state and in the URL's query string.

A page opened cold by URL (a share link, a reload on a restarted server) runs without app.py
and without any other page having run, so the selection is rebuilt here from the query string
on a session's first run, then kept in ``sel_<field>`` session keys that survive page switches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import streamlit as st

from explorer.engine.options import SpectralOptions
from explorer.metrics.results import MetricsOptions
from explorer.sources.policy import SOURCE_KIND_LABELS, source_kind

#: Query-string fields of a selection and the value each takes when the URL lacks it.
DEFAULTS: dict[str, str] = {
    "source": "zoo:digits-mlp-finetune",
    "layer": "layers.1",
    "view": "",
    "mode": "",  # empty: the view's default mode (the sidebar resolves it once the view is known)
    "center": "none",
    "tau": "0.9",
    "k": "8",
    "strict": "",  # off; a share link turns it on with strict=1
    "newcomer": "",  # none; a SOURCE projected onto the family (Apply page) and marked on the Embedding page
}


@dataclass(frozen=True)
class Selection:
    """What the sidebar picked: small hashable values (the keys of every cached computation).

    Attributes
    ----------
    source : str
        SOURCE string (``zoo:NAME``, a path, ``hf:ORG/REPO``...).
    layer : str
        Layer group name.
    view : str
        ``full``, ``delta``, ``A``, ``B`` or ``dW``; empty for the family's default view.
    mode, center : str
        Spectral options (see :class:`explorer.engine.options.SpectralOptions`).
    tau : float
        Threshold of k(τ).
    k : int
        Size of each model's own subspace (overlaps) and of its coordinate block.
    strict : bool
        Refuse a family with a bad member (one ``st.error``) instead of analysing the rest.
    newcomer : str
        A SOURCE whose models are projected onto the family's basis (empty: none).
    scheduler : str
        Dask scheduler address the analyses not yet cached run on (empty: this machine); not in
        the URL.
    """

    source: str
    layer: str
    view: str
    mode: str
    center: str
    tau: float
    k: int = 8
    strict: bool = False
    newcomer: str = ""
    scheduler: str = ""

    @property
    def options(self) -> SpectralOptions:
        """The decomposition options of this selection."""
        return SpectralOptions(mode=self.mode, center=self.center)

    @property
    def metrics(self) -> MetricsOptions:
        """k sets the size of each model's own subspace (overlaps) and of its coordinate block."""
        return MetricsOptions(k_coord=self.k, k_angles=self.k)

    def query(self) -> dict[str, str]:
        """The query-string fields that reopen this selection (the keys of :data:`DEFAULTS`).

        ``strict`` and ``newcomer`` are written only when set, so ordinary links stay as short as before.
        """
        q = {"source": self.source, "layer": self.layer, "view": self.view, "mode": self.mode,
             "center": self.center, "tau": f"{self.tau:g}", "k": str(self.k)}
        if self.strict:
            q["strict"] = "1"
        if self.newcomer:
            q["newcomer"] = self.newcomer
        return q


def init_state() -> None:
    """Fill the ``sel_*`` session keys once per session: from the URL first, then defaults."""
    if st.session_state.get("_restored"):
        return
    qp = st.query_params
    for field, default in DEFAULTS.items():
        st.session_state[f"sel_{field}"] = qp.get(field, default)
    src = st.session_state["sel_source"]
    kind = source_kind(src)
    st.session_state["sel_kind"] = SOURCE_KIND_LABELS[kind]
    st.session_state["sel_path"] = src if kind == "local" else ""
    st.session_state["sel_hub"] = src if kind == "hub" else ""
    st.session_state["_restored"] = True


def write_query(sel: Selection) -> None:
    """Write ``sel`` to the query string, so the URL always reopens the current view."""
    st.query_params.from_dict(sel.query())


def widget(field: str, make: Callable[..., Any], **kwargs: Any) -> Any:
    """Draw a widget whose value survives page switches and comes from the URL on a cold start.

    Streamlit drops a widget's state when a page that does not draw it runs, so the value lives
    in ``sel_<field>``; the widget key ``w_<field>`` is seeded from it before the widget is
    drawn, and an ``on_change`` callback (which runs before the rerun) copies the user's change
    back.  A stored value that is not among ``options`` falls back to the first option.

    Parameters
    ----------
    field : str
        Name of the selection field.
    make : callable
        The Streamlit widget function (``st.selectbox``, ``st.radio``...).
    **kwargs
        Passed on to ``make``.

    Returns
    -------
    The widget's value.
    """
    wkey, skey = f"w_{field}", f"sel_{field}"
    options = kwargs.get("options")
    if options is not None and st.session_state.get(skey) not in options:
        st.session_state[skey] = options[0]
    st.session_state[wkey] = st.session_state[skey]

    def sync() -> None:
        st.session_state[skey] = st.session_state[wkey]

    return make(key=wkey, on_change=sync, **kwargs)


def defaulted_widget(key: str, make: Callable[..., Any], default: Any, **kwargs: Any) -> Any:
    """Draw a page-local widget (not in the URL) whose default is computed by the page.

    The value shown is the user's last pick (kept in ``pick_<key>``, so it survives page
    switches and reruns) while ``options`` still offer it, else ``default`` (else the first
    option).  A default is never taken for a pick: it follows what the page computes it from
    (another layer, another family) until the user picks a value.

    Parameters
    ----------
    key : str
        The widget's key.
    make : callable
        The Streamlit widget function (``st.selectbox``, ``st.radio``...); it must take ``options``.
    default : object
        The value shown when the user has not picked one that is offered.
    **kwargs
        Passed on to ``make`` (``options`` included).

    Returns
    -------
    The widget's value.
    """
    options = list(kwargs["options"])
    pkey = f"pick_{key}"
    picked = st.session_state.get(pkey)
    st.session_state[key] = picked if picked in options else default if default in options else options[0]

    def remember() -> None:
        st.session_state[pkey] = st.session_state[key]

    return make(key=key, on_change=remember, **kwargs)


def as_float(x: object, default: float) -> float:
    """``float(x)``, or ``default`` for a value from the URL that is not a finite number.

    ``nan`` and ``inf`` parse as floats but no slider can hold them (``tau=nan`` in a share
    link would otherwise reach ``st.slider`` and fail).
    """
    try:
        value = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) else default


#: Query-string spellings of an on / off flag (``strict=1``); anything else is not honoured.
FLAG_VALUES: dict[str, bool] = {"1": True, "true": True, "yes": True, "on": True,
                                "0": False, "false": False, "no": False, "off": False, "": False}


def as_flag(x: object) -> bool:
    """A flag from session state or the URL: a bool as it is, a string by :data:`FLAG_VALUES` (else off)."""
    if isinstance(x, bool):
        return x
    return FLAG_VALUES.get(str(x).strip().lower(), False)
