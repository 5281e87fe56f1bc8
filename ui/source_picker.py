"""The sidebar's family picker: built-in zoo, local path, Hugging Face Hub or upload.

The kinds offered and their labels come from :mod:`explorer.sources.policy`, so server mode
(``EXPLORER_SERVER_MODE=1``) can turn off local paths outside its roots, Hub downloads and
uploads in one place for the app and the CLI.

Uploads are per session: the folders a session uploaded are kept in ``st.session_state``
(:data:`UPLOADS_KEY`), count against its upload total, and in server mode are the only upload
folders it may open (a share link to another session's upload, or to the uploads folder, is
refused with one message).
"""
from __future__ import annotations

import streamlit as st

from explorer.core.errors import ExplorerError
from explorer.sources import policy
from explorer.sources import upload as uploads
from explorer.zoo import registry
from ui.state import widget

_LABEL_KIND = {label: kind for kind, label in policy.SOURCE_KIND_LABELS.items()}
#: Session key of the upload folders this session made (a list of paths, oldest first).
UPLOADS_KEY = "_upload_dirs"


def session_uploads() -> list[str]:
    """The upload folders this session made."""
    return list(st.session_state.get(UPLOADS_KEY, []))


def zoo_sources() -> list[str]:
    """Default zoo families first, then the on-demand ones (built when picked)."""
    recipes = registry.list_recipes()
    return [f"zoo:{r.name}" for r in recipes if r.default] + [f"zoo:{r.name}" for r in recipes if not r.default]


def zoo_label(source: str) -> str:
    """The picker's label of a zoo family: on-demand ones not built yet say so, with their build time."""
    r = registry.get_recipe(source[4:])
    if r.default or registry.is_built(r.name):
        return source
    secs = f", ~{max(1, round(r.expected_seconds / 60))} min" if r.expected_seconds else ""
    return f"{source} (built on demand{secs})"


def pick_source() -> str:
    """Draw the source pickers; return the SOURCE string ('' when none is given yet)."""
    allowed = policy.allowed_source_kinds()
    labels = [label for kind, label in policy.SOURCE_KIND_LABELS.items() if kind in allowed]
    kind = _LABEL_KIND[widget("kind", st.radio, label="Source", options=labels, horizontal=True)]
    if kind == "zoo":
        zoo = zoo_sources()
        if st.session_state["sel_source"] in zoo:
            st.session_state["sel_zoo"] = st.session_state["sel_source"]
        return widget("zoo", st.selectbox, label="Built-in family", options=zoo, format_func=zoo_label,
                      help="Families built here from scikit-learn's digits data, a planted synthetic one, "
                      "and LoRA adapters on MiniLM-L6 (on demand).")
    if kind == "local":
        return _own_uploads_only(widget("path", st.text_input, label="Folder, weight file or manifest",
                                        placeholder="/data/my-loras  or  family.yaml").strip())
    if kind == "hub":
        return widget("hub", st.text_input, label="Hub repos", placeholder="hf:org/repo[,org/repo2] or hf:org/prefix*",
                      help=("server mode: only repos already in the local HF cache (or listed in "
                            "EXPLORER_HUB_ALLOW)" if policy.server_mode() else
                            "Downloads only the needed files into the standard Hugging Face cache; "
                            "with HF_HUB_OFFLINE=1 it works from that cache.")).strip()
    return _own_uploads_only(_pick_upload())


def _own_uploads_only(source: str) -> str:
    """``source``, or '' after one ``st.error`` when server mode keeps it from this session
    (another session's upload, or the uploads folder itself)."""
    if source and policy.server_mode():
        try:
            uploads.check_upload_access(source, session_uploads())
        except ExplorerError as exc:
            st.error(str(exc))
            return ""
    return source


def _pick_upload() -> str:
    """The sidebar's upload picker (the family)."""
    return upload_picker("w_upload", "Weight files, adapter folders as .zip, metadata.csv")


def upload_picker(key: str, label: str) -> str:
    """An upload picker; return the uploaded family's SOURCE ("" before an upload or after a refusal).

    The uploaded family is written once per distinct set of files; the folder counts against this
    session's uploads (and is one it may open in server mode).  Used for the family (sidebar) and
    for newcomers (the Apply page), each under its own widget ``key``.
    """
    files = st.file_uploader(label, accept_multiple_files=True, key=key)
    sig_key, src_key, err_key = f"_{key}_sig", f"_{key}_source", f"_{key}_error"
    if not files:
        return st.session_state.get(src_key, "")
    # Streamlit hands the same files back on every rerun; only a new set is unpacked again.  Each
    # upload has its own file_id (a fixed file uploaded again under the same name and size too),
    # and the library names the folder by content hash.  The strict toggle is drawn below this
    # picker, but its on_change has already updated sel_strict.
    strict = bool(st.session_state.get("sel_strict"))
    sig = (tuple(getattr(f, "file_id", None) or (f.name, f.size) for f in files), strict)
    if st.session_state.get(sig_key) != sig:
        mine = session_uploads()
        try:
            # The files are passed as file objects: the library streams them to disk in chunks.
            fam = uploads.family_from_uploads([(f.name, f) for f in files], strict=strict, session_dirs=mine)
        except ExplorerError as exc:  # refused once: the same files are not unpacked again on reruns
            st.session_state[sig_key], st.session_state[src_key] = sig, ""
            st.session_state[err_key] = str(exc)
        else:
            folder = uploads.upload_folder(fam.source)
            if folder is not None and str(folder) not in mine:
                st.session_state[UPLOADS_KEY] = [*mine, str(folder)]
            st.session_state[sig_key], st.session_state[src_key] = sig, fam.source
            st.session_state[err_key] = ""
    if st.session_state.get(err_key):
        st.error(st.session_state[err_key])
        return ""
    return st.session_state[src_key]
