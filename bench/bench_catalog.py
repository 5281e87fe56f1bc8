"""Catalog of 500 LoRA adapters from headers only: bytes read against bytes on disk, and time.

Generates N synthetic PEFT adapters of Mistral-7B shape (hidden 4096; k/v project to 1024 because
of grouped-query attention), rank 16 on q/k/v in 32 layers, in a temporary folder; builds the
family and its layer catalog; prints what was read; deletes the folder.  Bytes read are the
process's ``rchar`` from /proc/self/io (every byte returned by read(2), page cache or not).

Usage::

    .venv/bin/python bench/bench_catalog.py [--n 500] [--layers 32] [--rank 16] [--dtype bf16] [--dir TMP]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from explorer.catalog.groups import build_catalog  # noqa: E402
from explorer.sources import readers  # noqa: E402
from explorer.sources.resolve import load_family  # noqa: E402

HIDDEN, KV = 4096, 1024
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def rchar() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


def write_adapters(root: Path, n: int, layers: int, rank: int, dtype: torch.dtype) -> int:
    """Write n PEFT adapter folders; return their total size in bytes.

    Values are windows of one random pool at a different offset per adapter: every file holds
    distinct data, without paying for 500 x 9.4 M random draws on a small machine.
    """
    shapes = {"q_proj": HIDDEN, "k_proj": KV, "v_proj": KV}
    per_adapter = layers * sum(rank * HIDDEN + out * rank for out in shapes.values())
    stride = 997
    pool = torch.randn(per_adapter + n * stride, generator=torch.Generator().manual_seed(0)).to(dtype)
    total = 0
    for i in range(n):
        d = root / f"adapter-{i:03d}"
        d.mkdir()
        cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(shapes),
               "base_model_name_or_path": "mistralai/Mistral-7B-v0.1", "task_type": "CAUSAL_LM"}
        (d / "adapter_config.json").write_text(json.dumps(cfg))
        sd, off = {}, i * stride
        for layer in range(layers):
            for proj, out in shapes.items():
                pre = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
                for part, shape in (("lora_A", (rank, HIDDEN)), ("lora_B", (out, rank))):
                    numel = shape[0] * shape[1]
                    # clone: safetensors refuses tensors that share storage
                    sd[f"{pre}.{part}.weight"] = pool[off:off + numel].view(shape).clone()
                    off += numel
        save_file(sd, str(d / "adapter_model.safetensors"))
        total += sum(p.stat().st_size for p in d.iterdir())
        if (i + 1) % 100 == 0:
            print(f"  wrote {i + 1}/{n} adapters", flush=True)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--dir", default=None, help="parent of the temporary folder (default: system temp)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-catalog-", dir=args.dir))
    try:
        print(f"writing {args.n} adapters ({args.layers} layers x q/k/v, rank {args.rank}, {args.dtype}) to {root}")
        t = time.perf_counter()
        on_disk = write_adapters(root, args.n, args.layers, args.rank, DTYPES[args.dtype])
        print(f"  {on_disk / 1e9:.2f} GB on disk ({on_disk / args.n / 1e6:.1f} MB per adapter) in {time.perf_counter() - t:.0f} s")
        for attempt in ("first build", "second build (header cache warm)"):
            if attempt == "first build":
                readers._header_cached.cache_clear()
            r0, t0 = rchar(), time.perf_counter()
            fam = load_family(str(root))
            cat = build_catalog(fam)
            secs, nread = time.perf_counter() - t0, rchar() - r0
            print(f"{attempt}: {len(fam)} models, {len(cat)} layer groups "
                  f"({cat[0].name}: {cat[0].kind}, shape {cat[0].shape}, rank {cat[0].rank}, n_models {cat[0].n_models})")
            print(f"  bytes read {nread:,} of {on_disk:,} on disk = {nread / on_disk:.5%} "
                  f"({nread / len(fam) / 1e3:.1f} kB per adapter); time {secs:.2f} s")
        print("note: files were just written, so the page cache is warm; rchar counts bytes read either way")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        print(f"deleted {root}")


if __name__ == "__main__":
    main()
