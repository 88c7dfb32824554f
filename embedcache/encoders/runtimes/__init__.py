"""Where a sentence-transformers model runs: torch, or an export to ONNX Runtime or OpenVINO (fp32 or int8).

``sessions`` (the runtimes: a batch in, embeddings out), ``export`` (exports made
once per machine), ``auto`` (``backend="auto"``: measure, then choose), ``batching``
(batches by token count, the background producer), ``machine`` (CPU features, cores,
the export directory).
"""

from .export import BACKENDS, calibration_sample, export_home, read_export
from .machine import cpu_cores, cpu_flags, cpu_has_bf16, cpu_info, dist_version, int8_kernel
from .sessions import OnnxRuntime, OpenVinoRuntime, TorchRuntime, load_runtime

__all__ = [
    "BACKENDS",
    "OnnxRuntime",
    "OpenVinoRuntime",
    "TorchRuntime",
    "calibration_sample",
    "cpu_cores",
    "cpu_flags",
    "cpu_has_bf16",
    "cpu_info",
    "dist_version",
    "export_home",
    "int8_kernel",
    "load_runtime",
    "read_export",
]
