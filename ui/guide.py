"""The guide shown in the main area while no family is chosen (instead of an empty page).

The sidebar returns no selection while its source picker holds nothing to open: the *Local
path* or *Hugging Face Hub* box is empty, or no upload has been made (or it was refused).  Every
page then shows :func:`family_guide`: what a family is, the sources this server accepts (server
mode offers fewer, :func:`explorer.sources.policy.allowed_source_kinds`), and how to start.
"""
from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from explorer.sources.policy import SOURCE_KIND_LABELS, allowed_source_kinds

#: What each source kind accepts, in the picker's order (the labels are the picker's own).
SOURCE_HELP: dict[str, str] = {
    "zoo": "a family built here on first use, e.g. `zoo:digits-mlp-finetune` (60 fine-tunes of one "
           "MLP), `zoo:digits-lora` (120 LoRA adapters in two A-init groups) or `zoo:planted`.",
    "local": "a folder of weight files (`.safetensors`, `.pt`, `.bin`: one model each) or of model "
             "subfolders (PEFT adapters: `adapter_config.json` + `adapter_model.safetensors`; sharded "
             "checkpoints), or a family manifest (`family.yaml`); a `metadata.csv` beside the models "
             "adds labels to colour and group them by.",
    "hub": "Hugging Face repos, `hf:org/repo[,org/repo2]` or `hf:org/prefix*`, read from the local "
           "Hugging Face cache (downloaded into it when the server allows).",
    "upload": "weight files, or adapter folders as `.zip`, dropped in the sidebar (with an optional "
              "`metadata.csv`).",
}


def no_family() -> bool:
    """Whether the sidebar has no source to open (as opposed to one that failed to load)."""
    return not st.session_state.get("sel_source")


def guide_markdown(kinds: Sequence[str]) -> str:
    """The guide's text for the source kinds ``kinds`` (those the sidebar offers).

    Parameters
    ----------
    kinds : sequence of str
        Source kinds, keys of :data:`explorer.sources.policy.SOURCE_KIND_LABELS`.

    Returns
    -------
    str
        Markdown: what a family is, one line per accepted source, how to start.
    """
    lines = [
        "#### No model family chosen yet",
        ("A **family** is a set of models of one architecture — fine-tunes, LoRA adapters, or networks "
         "trained from scratch on different tasks, data or seeds. The explorer stacks one layer of every "
         "model, decomposes them jointly, and shows how much of the family a few shared directions hold, "
         "beside the baselines that decide whether that structure is real."),
        "",
        "**Sources the sidebar accepts**",
    ]
    lines += [f"- **{SOURCE_KIND_LABELS[k]}**: {SOURCE_HELP[k]}" for k in SOURCE_KIND_LABELS if k in kinds]
    start = ("pick **Built-in zoo** under *Source* in the sidebar and choose a family; the page then "
             "shows its first layer group." if "zoo" in kinds else
             "give a source in the sidebar; the page then shows its first layer group.")
    lines += ["", f"**To start**, {start} The layer group and decomposition pickers appear below the source."]
    return "\n".join(lines)


def _open_zoo() -> None:
    st.session_state["sel_kind"] = SOURCE_KIND_LABELS["zoo"]


def family_guide() -> None:
    """Draw the guide in the main area, with a button that switches the sidebar to the zoo."""
    kinds = allowed_source_kinds()
    with st.container(border=True):
        st.markdown(guide_markdown(kinds))
        if "zoo" in kinds:
            st.button("Use the built-in zoo", key="guide_open_zoo", on_click=_open_zoo, icon=":material/explore:")
