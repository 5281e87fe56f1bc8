"""Subspace Explorer: joint spectral analysis of model families (the library; no streamlit).

Python API::

    import explorer
    fam = explorer.load_family("zoo:planted")
    res = explorer.analyze(fam, "layers.0", options=explorer.SpectralOptions(mode="out"))
    res.spectrum.k_at(0.9)
"""
__version__ = "0.1.0"

from .analysis import Analysis, analyze  # noqa: E402
from .catalog import LayerGroup, build_catalog  # noqa: E402
from .errors import ExplorerError, InputError, OptionError  # noqa: E402
from .family import Family, ModelRef  # noqa: E402
from .sources.resolve import load_family  # noqa: E402
from .spectral import SpectralOptions, Spectrum, decompose  # noqa: E402

__all__ = [
    "Analysis", "ExplorerError", "Family", "InputError", "LayerGroup", "ModelRef", "OptionError",
    "SpectralOptions", "Spectrum", "analyze", "build_catalog", "decompose", "load_family",
]
