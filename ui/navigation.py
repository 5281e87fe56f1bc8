"""The start of every page: page config, links to the other pages, state, sidebar, analysis.

The app uses Streamlit's ``pages/`` folder mode without ``st.navigation``, so a page opened
cold by URL runs on its own (DESIGN.md, "Deep links must work"); each page therefore starts
with :func:`page_setup` or :func:`page_analysis`, which rebuild everything it needs.
"""
from __future__ import annotations

from typing import Callable

import streamlit as st

import explorer
from explorer.engine.options import Spectrum
from ui.compute import analysis
from ui.guide import family_guide, no_family
from ui.notices import link_warnings, remember_link, skipped_warning
from ui.sidebar import sidebar
from ui.state import Selection, init_state

#: (file, label, icon) of every page; the sidebar's links are drawn here so the labels are ours.
PAGES: tuple[tuple[str, str, str], ...] = (
    ("app.py", "Home · tour", ":material/explore:"),
    ("pages/1_Spectrum.py", "Spectrum", ":material/bar_chart:"),
    ("pages/2_Overlap.py", "Overlap", ":material/join_inner:"),
    ("pages/3_Embedding.py", "Embedding", ":material/scatter_plot:"),
    ("pages/4_Generalization.py", "Generalization", ":material/target:"),
    ("pages/5_Atlas.py", "Atlas", ":material/map:"),
    ("pages/6_Apply.py", "Apply", ":material/build:"),
)


def page_links() -> None:
    """Links to every page at the top of the sidebar."""
    for path, label, icon in PAGES:
        st.sidebar.page_link(path, label=label, icon=icon)
    st.sidebar.divider()


def page_setup(title: str, icon: str = "🧭") -> Selection | None:
    """Configure the page, restore state, draw the shared sidebar; return the selection.

    Returns None (after showing why) when no valid family is selected; the page should stop.
    Share-link values the sidebar could not honour are named in one ``st.warning`` each.
    """
    st.set_page_config(page_title=f"{title} · Subspace Explorer", page_icon=icon, layout="wide")
    remember_link()
    init_state()
    page_links()
    sel = sidebar()
    link_warnings(sel)
    return sel


def page_family(title: str, icon: str, heading: str) -> Selection:
    """The start of a page that works on the whole family (Atlas, Apply): set-up, sidebar, heading.

    Stops the page after the guide while no family is chosen, or after the sidebar's error.
    """
    sel = page_setup(title, icon)
    st.title(heading)
    if sel is None:
        if no_family():
            family_guide()
        st.stop()
    return sel


def page_analysis(title: str, icon: str, heading: str,
                  preview: Callable[[Selection, Spectrum], None] | None = None) -> tuple[Selection, explorer.Analysis]:
    """The start of every view page: set-up, sidebar, heading, then the selection's analysis.

    ``preview(sel, spectrum)`` draws a first chart while a computed analysis is still on its
    metrics (:func:`ui.compute.compute`).

    Stops the page when there is nothing to show: after the guide (:func:`ui.guide.family_guide`)
    while no family is chosen, after an ``st.error`` when one cannot be used; members the
    analysis left out are named in one ``st.warning`` above the charts.
    """
    sel = page_family(title, icon, heading)
    res = analysis(sel, None if preview is None else (lambda spectrum: preview(sel, spectrum)))
    if res is None:
        st.stop()
    skipped_warning(res.skipped)
    return sel, res


def open_group(layer: str, view: str, page: str = "pages/1_Spectrum.py") -> None:
    """Switch to ``page`` showing ``layer`` in ``view`` (the Atlas's click-through).

    The sidebar takes its module type from the layer and resets the layer range, so the layer
    cannot be hidden by a range picked for another module; the mode follows the view.
    """
    st.session_state.update(sel_layer=layer, sel_view=view)
    for key in ("sel_module_type", "sel_layer_range"):
        st.session_state.pop(key, None)
    st.switch_page(page)
