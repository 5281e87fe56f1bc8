"""The sidebar's cluster setting: a Dask scheduler address (empty: compute on this machine).

It starts as ``$EXPLORER_SCHEDULER`` and stays for the session (it is not written to share links:
a link names what is analysed, not where).  The library connects on the first analysis that
needs computing; a scheduler nobody answers at is one ``st.error`` naming the address.
"""
from __future__ import annotations

import streamlit as st

from explorer.cluster.connect import SCHEDULER_ENV, scheduler_address

HELP = ("Address of a Dask scheduler (tcp://host:8786) whose workers see the same files: analyses not yet "
        f"cached then read and sum the models there. Empty: this machine. Starts as ${SCHEDULER_ENV}.")


def _keep() -> None:
    st.session_state["sel_scheduler"] = st.session_state["w_scheduler"]


def pick_scheduler() -> str:
    """Draw the setting (in an expander); return the address, or "" for this machine."""
    if "sel_scheduler" not in st.session_state:
        st.session_state["sel_scheduler"] = scheduler_address() or ""
    st.session_state["w_scheduler"] = st.session_state["sel_scheduler"]
    with st.expander("Cluster (Dask)", expanded=bool(st.session_state["sel_scheduler"])):
        st.text_input("Scheduler", key="w_scheduler", on_change=_keep, placeholder="tcp://host:8786", help=HELP)
    return scheduler_address(st.session_state["sel_scheduler"]) or ""
