"""Hugging Face Hub sources: ``hf:org/repo[@rev][,org/repo...]`` and ``hf:Org/Prefix*`` globs.

Files go through :func:`huggingface_hub.snapshot_download` into the standard HF cache
(``$HF_HUB_CACHE``), downloading only what a model needs (``allow_patterns``): the adapter
config and weights of a PEFT adapter, else the safetensors files (with their index), else the
torch files, plus ``README.md`` for model-card labels.  With ``HF_HUB_OFFLINE=1`` everything
resolves from the cache; a glob then matches the repos present in the cache (listing a Hub
organisation needs the network).
"""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from explorer.core.errors import InputError
from explorer.core.paths import hub_cache
from explorer.core.progress import ProgressFn
from explorer.sources.family import Family, ModelRef, Skipped
from explorer.sources.folder import load_model
from explorer.sources.labels import compile_name_regex, regex_labels
from explorer.sources.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from explorer.sources.policy import (
    hub_download_allowed,
    server_mode,
    validate_repo_id,
    validate_revision,
)

PREFIX = "hf:"


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now, not at import."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if env is not None:
        return env.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE)


def parse_spec(source: str) -> list[tuple[str, str | None]]:
    """``hf:a/b@rev,c/d`` -> ``[("a/b", "rev"), ("c/d", None)]`` (globs are kept as given).

    Raises
    ------
    InputError
        If an entry is not ``org/repo`` (with an optional ``@revision``).
    """
    body = source[len(PREFIX):] if source.startswith(PREFIX) else source
    out = []
    for item in (s.strip() for s in body.split(",")):
        if not item:
            continue
        repo, _, rev = item.partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            shown = item.encode("ascii", "backslashreplace").decode()
            raise InputError(f"{source}: {shown!r} is not ORG/REPO[@REVISION]")
        # Checked before any Hub call or cache path is built from it (no "../" can reach a path).
        validate_repo_id(repo, source, glob=any(c in repo for c in "*?["))
        if rev:
            validate_revision(rev, source)
        out.append((repo, rev or None))
    if not out:
        raise InputError(f"{source}: names no repository (expected hf:ORG/REPO[,ORG/REPO...])")
    return out


def cached_repos(cache: Path) -> list[str]:
    """Repo ids of the models present in an HF cache folder (``models--org--name``)."""
    if not cache.is_dir():
        return []
    out = []
    for p in sorted(cache.iterdir()):
        if p.is_dir() and p.name.startswith("models--") and (p / "snapshots").is_dir():
            org, _, name = p.name[len("models--"):].partition("--")
            if org and name:
                out.append(f"{org}/{name}")
    return out


def expand_glob(pattern: str, cache: Path) -> list[str]:
    """Repo ids matching ``Org/Prefix*``: from the Hub when online, from the cache offline.

    Raises
    ------
    InputError
        If nothing matches.
    """
    if is_offline() or (server_mode() and not hub_download_allowed(pattern)):
        found = [r for r in cached_repos(cache) if fnmatch.fnmatchcase(r, pattern)]
        why = "HF_HUB_OFFLINE is set" if is_offline() else "server mode: no Hub listing"
        where = f"the local HF cache {cache} ({why})"
    else:
        from huggingface_hub import HfApi

        org, _, name = pattern.partition("/")
        stem = name.split("*")[0].split("?")[0]
        try:
            listed = [m.id for m in HfApi().list_models(author=org, search=stem or None)]
        except Exception as exc:  # network down, Hub error: fall back to what the cache holds
            listed = cached_repos(cache)
            where = f"the local HF cache {cache} (Hub listing failed: {exc.__class__.__name__})"
        else:
            where = "the Hub"
        found = sorted(r for r in listed if fnmatch.fnmatchcase(r, pattern))
    if not found:
        raise InputError(f"hf:{pattern}: matches no repository in {where}")
    return found


def choose_files(files: list[str]) -> list[str]:
    """The files of a repo listing that a model needs (top level only).

    A PEFT adapter: its config and weights.  Else the safetensors index and shards, else the
    single safetensors files, else the torch index/shards or files.  ``README.md`` always.
    """
    top = {f for f in files if "/" not in f}
    keep: list[str] = []
    if ADAPTER_CONFIG in top:
        keep = [ADAPTER_CONFIG] + [w for w in ADAPTER_WEIGHTS if w in top][:1]
    else:
        for ext in (".safetensors", ".bin", ".pt", ".pth"):
            idx = sorted(f for f in top if f.endswith(ext + ".index.json"))
            weights = sorted(f for f in top if f.endswith(ext))
            if weights:
                keep = idx[:1] + weights
                break
    if "README.md" in top:
        keep.append("README.md")
    return keep


def _snapshot(repo: str, rev: str | None, cache: Path) -> tuple[Path, str]:
    """Download (or find offline) what ``repo`` needs; return its snapshot folder and commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # Server mode downloads nothing unless EXPLORER_HUB_ALLOW names the repo: cache only.
    refused = not hub_download_allowed(repo)
    offline = is_offline() or refused
    listing: list[str] = []
    commit = rev or "main"
    if not offline:
        try:
            dry = snapshot_download(repo, revision=rev, cache_dir=cache, dry_run=True)
            listing = [f.filename for f in dry]
            commit = dry[0].commit_hash if dry else commit
        except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as exc:
            raise InputError(f"hf:{repo}: {str(exc).splitlines()[0]}") from None
        except Exception:  # network down or Hub unavailable: work from the cache, as offline
            offline = True
    try:
        if offline:
            # The snapshot folder's own listing chooses the same files the online listing chose.
            storage = cache / f"models--{repo.replace('/', '--')}"
            ref = storage / "refs" / (rev or "main")
            commit = ref.read_text().strip() if ref.is_file() else (rev or "")
            snap = storage / "snapshots" / commit
            listing = [p.name for p in snap.iterdir()] if commit and snap.is_dir() else []
        patterns = choose_files(listing)
        if not patterns and listing:
            raise InputError(f"hf:{repo}: has no adapter, safetensors or torch weights at its top level")
        folder = snapshot_download(
            repo, revision=commit if not offline else rev, cache_dir=cache,
            allow_patterns=patterns or None, local_files_only=offline,
        )
    except IncompleteSnapshotError as exc:
        raise InputError(f"hf:{repo}: {str(exc).splitlines()[0]}") from None
    except LocalEntryNotFoundError:
        if refused:
            raise InputError(f"hf:{repo}: is not in the local HF cache {cache}, and server mode allows no "
                             "Hub downloads (EXPLORER_HUB_ALLOW lists the repos it may download)") from None
        raise InputError(f"hf:{repo}{'@' + rev if rev else ''}: is not in the local HF cache {cache} "
                         "and the Hub cannot be reached (or HF_HUB_OFFLINE is set)") from None
    except HfHubHTTPError as exc:
        raise InputError(f"hf:{repo}: the Hub refused it ({str(exc).splitlines()[0]})") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"hf:{repo}: cannot be fetched ({exc.__class__.__name__}: {exc})") from None
    folder = Path(folder)
    return folder, folder.name


def load_hub(
    source: str,
    progress: ProgressFn | None = None,
    cache_dir: str | Path | None = None,
    name_regex: str | None = None,
) -> Family:
    """Resolve ``hf:...`` into a family: one model per repo, named by its repo id.

    Parameters
    ----------
    source : str
        ``hf:org/repo[@rev][,org/repo...]``, entries may be globs (``hf:Org/Prefix*``).
    progress : callable(done, total, label), optional
        Called after each repo.
    cache_dir : path, optional
        HF cache folder (default: the standard one, ``$HF_HUB_CACHE``).
    name_regex : str, optional
        Regex with named groups applied to each repo id, e.g. ``task(?P<task>\\d+)``.

    Raises
    ------
    InputError
        If no repo can be used; repos that fail are listed in ``Family.skipped`` (path ``hf:org/repo``).
    """
    cache = Path(cache_dir).expanduser() if cache_dir else hub_cache()
    rx = compile_name_regex(name_regex)
    repos: list[tuple[str, str | None]] = []
    for repo, rev in parse_spec(source):
        if any(c in repo for c in "*?["):
            repos.extend((r, rev) for r in expand_glob(repo, cache))
        else:
            repos.append((repo, rev))
    models: list[ModelRef] = []
    skipped: list[Skipped] = []
    for i, (repo, rev) in enumerate(dict.fromkeys(repos)):
        try:
            folder, commit = _snapshot(repo, rev, cache)
            labels = {"repo": repo, "revision": commit, **regex_labels(rx, repo)}
            models.append(load_model(folder, repo, labels, source=f"hf:{repo}@{commit}"))
        except InputError as exc:
            skipped.append(Skipped(repo, f"hf:{repo}" + (f"@{rev}" if rev else ""), str(exc)))
        if progress is not None:
            progress(i + 1, len(repos), repo)
    return Family(name=source, source=source, models=models, skipped=skipped)
