"""Subspace Explorer: joint spectral analysis of model families (the library; no streamlit).

Python API (the app and the CLI call the same functions)::

    import explorer
    fam = explorer.load_family("zoo:planted")            # any SOURCE
    res = explorer.analyze(fam, "layers.0", options=explorer.SpectralOptions(mode="out"))
    res.spectrum.k_at(0.9), res.metrics.heldout.kfold.mean(0)
    res = explorer.analyze_cached("zoo:planted", "layers.0")   # through the disk cache
    comp = explorer.compress_family(fam, ["layers.0"], k=8)    # basis + coefficients
    explorer.write_bundle(comp, "out/bundle")
"""
from explorer.apply.bundle import read_bundle, write_bundle
from explorer.apply.compression import Compression, compress_family
from explorer.apply.newcomer import project_newcomers
from explorer.catalog.groups import LayerGroup, build_catalog
from explorer.catalog.views import DenseStream, FactorStream
from explorer.core.errors import ExplorerError, InputError, OptionError
from explorer.core.lowrank import LowRank
from explorer.core.version import __version__
from explorer.engine.dense import decompose
from explorer.engine.factored import decompose_factored
from explorer.engine.options import SpectralOptions, Spectrum
from explorer.metrics.results import Metrics, MetricsOptions
from explorer.pipeline.analyze import analyze, analyze_cached, cache_key
from explorer.pipeline.result import Analysis
from explorer.sources.family import Family, ModelRef, Skipped
from explorer.sources.manifest import save_manifest
from explorer.sources.resolve import load_family, load_manifest
from explorer.sources.upload import family_from_uploads

__all__ = [
    "Analysis", "Compression", "DenseStream", "ExplorerError", "FactorStream", "Family", "InputError", "LayerGroup", "LowRank",
    "Metrics", "MetricsOptions", "ModelRef", "OptionError", "Skipped", "SpectralOptions", "Spectrum", "__version__", "analyze",
    "analyze_cached", "build_catalog", "cache_key", "compress_family", "decompose", "decompose_factored", "family_from_uploads",
    "load_family", "load_manifest", "project_newcomers", "read_bundle", "save_manifest", "write_bundle",
]
