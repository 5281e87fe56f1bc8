"""Subspace Explorer: joint spectral analysis of model families (the library; no streamlit).

Python API (the app and the CLI call the same functions)::

    import explorer
    fam = explorer.load_family("zoo:planted")            # any SOURCE
    res = explorer.analyze(fam, "layers.0", options=explorer.SpectralOptions(mode="out"))
    res.spectrum.k_at(0.9), res.metrics.heldout_kfold.mean(0)
    res = explorer.analyze_cached("zoo:planted", "layers.0")   # through the disk cache
"""
__version__ = "0.1.0"

from .analysis import Analysis, analyze, analyze_cached, cache_key  # noqa: E402
from .catalog import LayerGroup, build_catalog  # noqa: E402
from .errors import ExplorerError, InputError, OptionError  # noqa: E402
from .factored import decompose_factored  # noqa: E402
from .family import Family, ModelRef  # noqa: E402
from .metrics import Metrics, MetricsOptions  # noqa: E402
from .sources.manifest import load_manifest, save_manifest  # noqa: E402
from .sources.resolve import load_family  # noqa: E402
from .sources.upload import family_from_uploads  # noqa: E402
from .spectral import SpectralOptions, Spectrum, decompose  # noqa: E402
from .views import DenseStream, FactorStream  # noqa: E402

__all__ = [
    "Analysis", "DenseStream", "ExplorerError", "FactorStream", "Family", "InputError", "LayerGroup", "Metrics",
    "MetricsOptions", "ModelRef", "OptionError", "SpectralOptions", "Spectrum", "analyze", "analyze_cached",
    "build_catalog", "cache_key", "decompose", "decompose_factored", "family_from_uploads", "load_family", "load_manifest",
    "save_manifest",
]
