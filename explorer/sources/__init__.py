"""Where families come from: local folders (safetensors, sharded, PEFT adapters, torch files),
the Hugging Face Hub (``hf:``), uploads, manifests and the built-in zoo (``zoo:NAME``).

Use :func:`explorer.sources.resolve.load_family` (re-exported as ``explorer.load_family``).
"""
