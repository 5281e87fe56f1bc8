"""Families and their layer catalogs, loaded once per server and shared by every session.

``st.cache_resource`` keeps one :class:`explorer.Family` per SOURCE string (it holds headers
and paths, no tensor data); the catalogs are small lists, cached as data.  Zoo families are
built here on first use, with progress, before the loader runs.
"""
from __future__ import annotations

import streamlit as st

import explorer
from explorer.catalog.groups import LayerGroup, build_catalog
from explorer.core.errors import ExplorerError, OptionError
from explorer.core.paths import zoo_root
from explorer.sources import upload as uploads
from explorer.sources.policy import SOURCE_KIND_LABELS, allowed_source_kinds, server_mode, source_kind
from explorer.zoo import registry
from ui.progress import StatusProgress, format_seconds
from ui.source_picker import session_uploads
from ui.state import Selection


def load_family(source: str, strict: bool = False) -> explorer.Family:
    """The family for a SOURCE string, shared by all sessions (it holds no tensor data).

    ``strict`` is an argument (so part of the cache key): a family cached without it must not
    be served to a session that asked to refuse families with bad members.  A ``zoo:NAME`` is
    keyed by the zoo folder too: the same name under another cache root (``EXPLORER_CACHE_DIR``
    changed in the same process) is another family, whose files are elsewhere.

    Raises
    ------
    ExplorerError
        For a source that cannot be read; with ``strict``, for a family with a bad member.
    """
    return _load_family(source, strict, str(zoo_root()) if source.startswith("zoo:") else "")


@st.cache_resource(show_spinner=False, max_entries=16)
def _load_family(source: str, strict: bool, zoo_folder: str) -> explorer.Family:
    return explorer.load_family(source, strict=strict)


def load_catalog(source: str) -> list[LayerGroup]:
    """Every layer group of the family (from headers only)."""
    return _load_catalog(source, str(zoo_root()) if source.startswith("zoo:") else "")


@st.cache_data(show_spinner=False, max_entries=16)
def _load_catalog(source: str, zoo_folder: str) -> list[LayerGroup]:
    return build_catalog(load_family(source))


def split_catalog(source: str) -> tuple[list[LayerGroup], list[LayerGroup]]:
    """The layer groups held by every model of the family, and those held by only some.

    Only the first can be decomposed; the second are listed so users see why a layer is missing.
    """
    n = len(load_family(source))
    catalog = load_catalog(source)
    return [g for g in catalog if g.n_models == n], [g for g in catalog if g.n_models < n]


def ensure_zoo(source: str) -> None:
    """Build a ``zoo:NAME`` family on first use, showing progress; other sources are left alone.

    Raises
    ------
    ExplorerError
        For an unknown zoo name.
    """
    if not source.startswith("zoo:"):
        return
    name = source[4:]
    recipe = registry.get_recipe(name)
    if registry.is_built(name):
        return
    secs = recipe.expected_seconds
    eta = f", about {format_seconds(secs)}" if secs else ""
    with StatusProgress(f"Building {source} (first use only{eta})…", f"{source} built") as progress:
        registry.ensure_built(name, progress=progress)


def comparable_families(sel: Selection) -> list[str]:
    """Built zoo families other than the selected one holding its layer with the same shape and kind.

    Families not built yet are not offered: a comparison must not start a build of minutes.
    """
    mine = next((g for g in load_catalog(sel.source) if g.name == sel.layer), None)
    if mine is None:
        return []
    out = []
    for r in registry.list_recipes():
        src = f"zoo:{r.name}"
        if src == sel.source or not registry.is_built(r.name):
            continue
        try:
            g = next((g for g in load_catalog(src) if g.name == sel.layer), None)
        except ExplorerError:
            continue
        if g is not None and g.shape == mine.shape and g.kind == mine.kind:
            out.append(src)
    return out


def load_newcomers(source: str, strict: bool = False) -> explorer.Family:
    """The family of newcomers to project (Apply and Embedding pages), under the server's source policy.

    Raises
    ------
    ExplorerError
        For a source kind this server does not open, or one that cannot be read.
    """
    own = uploads.upload_folder(source) is not None
    if own:  # an upload: only this session's own (server mode), like the sidebar's
        if server_mode():
            uploads.check_upload_access(source, session_uploads())
    elif (kind := source_kind(source)) not in allowed_source_kinds():
        raise OptionError(f"{source}: this server does not open {SOURCE_KIND_LABELS[kind].lower()} sources")
    return load_family(source, strict)
