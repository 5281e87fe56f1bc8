"""Page scaffolding of the Streamlit app (not part of the library: it imports streamlit).

Every page starts with ``sel = ui.page_setup("Title")`` or ``sel, res = ui.page_analysis(...)``;
the modules hold one concept each:

- ``state``: :class:`Selection`, session state ↔ URL query string, state-backed widgets;
- ``navigation``: page config, links to the pages, :func:`page_setup`, :func:`page_analysis`;
- ``sidebar``: layer group and decomposition pickers, :func:`layers_in_range`;
- ``source_picker``: the zoo / local path / Hub / upload pickers;
- ``families``: cached family and catalog loaders, zoo builds on first use, comparable families;
- ``compute``: analyses through the library's disk cache (:func:`compute`, :func:`analysis`);
- ``guide``: the main area's guide while no family is chosen (:func:`family_guide`);
- ``notices``: warnings about input not used as asked (skipped members, share-link values);
- ``progress``: ``st.status`` + ``st.progress`` with an ETA, as a library progress callback;
- ``export``: the export bar.
"""
from ui.compute import analysis, compute
from ui.export import export_bar
from ui.families import comparable_families, ensure_zoo, load_catalog, load_family, load_newcomers
from ui.guide import family_guide, no_family
from ui.navigation import PAGES, open_group, page_analysis, page_family, page_setup
from ui.notices import skipped_warning
from ui.sidebar import layers_in_range
from ui.source_picker import upload_picker
from ui.state import DEFAULTS, Selection, defaulted_widget

__all__ = [
    "DEFAULTS",
    "PAGES",
    "Selection",
    "analysis",
    "comparable_families",
    "compute",
    "defaulted_widget",
    "ensure_zoo",
    "export_bar",
    "family_guide",
    "layers_in_range",
    "load_catalog",
    "load_family",
    "load_newcomers",
    "no_family",
    "open_group",
    "page_analysis",
    "page_family",
    "page_setup",
    "skipped_warning",
    "upload_picker",
]
