"""Exports of a sentence-transformers model to ONNX Runtime or OpenVINO (fp32 or int8).

The exports are made
once from the torch model, offline, with what installs beside our stack
(``torch.onnx.export``, ``onnxruntime.quantization``, ``openvino.convert_model``
and NNCF: optimum pins older transformers), into the per-user directory
``export_home()``, keyed by the source model's weights and the export settings;
a second load reuses them.  Static int8 (OpenVINO) is calibrated on texts the
caller gives, never on a downloaded dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from ...errors import EncoderError, MissingDependencyError, ParameterError
from ...files import atomic_directory, hash_files, json_sha256, writing
from .machine import dist_version, export_home, int8_kernel

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
EXPORT_FORMAT = 1  # bump when the export procedure changes what it writes
CALIBRATION_TEXTS = 300  # texts NNCF collects activation ranges on (its default subset size)
_VERIFIED: dict[str, tuple] = {}  # export directory -> stamp of its files when their hash last matched (this process)


def _files_stamp(files: list[Path]) -> tuple:
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def read_export(directory: Path, backend: str | None = None, source: str | None = None) -> dict:
    """An export's record, after checking that its files are the ones it recorded (sha256; rehashed only when
    a file's size or time changed since this process last checked) and that it was made from ``source``
    weights for ``backend``: a damaged, altered or foreign export is refused with one line."""

    def refuse(why: str):
        raise EncoderError(
            f"export {directory} {why}: it is not the export it says it is, so it was not used; "
            "delete that directory and run again to export anew"
        )

    try:
        record = json.loads((directory / "export.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        refuse(f"has no readable export.json ({e})")
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        refuse("has an export.json without its 'sha256'")
    if backend is not None and record.get("backend") != backend:
        refuse(f"was made for backend {record.get('backend')!r}, not {backend!r}")
    if source is not None and record.get("source") != source:
        refuse("was made from other weights than this model's")
    files = sorted(p for p in directory.iterdir() if p.name != "export.json")
    if any(p.is_symlink() or not p.is_file() for p in files):
        refuse("holds a link or a folder")
    stamp = _files_stamp(files)
    if _VERIFIED.get(str(directory)) != stamp:
        if hash_files(files) != record["sha256"]:
            refuse("does not match the checksum in its export.json (a file was replaced, cut short or added)")
        _VERIFIED[str(directory)] = stamp
    return record


def _graph(model, input_names: list[str]):
    """The whole sentence-transformers pipeline (transformer, pooling, dense, normalize) as one module of tensors."""
    import torch

    class SentenceGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(dict(zip(input_names, tensors)))["sentence_embedding"]

    return SentenceGraph().eval()


def _export_onnx(model, sample: dict, path: Path) -> None:
    import torch

    names = [k for k, v in sample.items() if isinstance(v, torch.Tensor)]
    axes = {k: {0: "batch", 1: "tokens"} for k in names} | {"sentence_embedding": {0: "batch"}}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that shape checks in transformers' masks become constants; the graph is
        # checked against torch on texts of many lengths by the tests.
        warnings.simplefilter("ignore")
        # The TorchScript exporter: the dynamo one needs onnxscript and fails on some attention masks.
        torch.onnx.export(
            _graph(model, names),
            tuple(sample[k] for k in names),
            str(path),
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _onnx_int8(source: Path, target: Path, kernel: str) -> dict:
    """Dynamic int8 (weights int8 per channel, activations quantized per batch), as optimum's config for ``kernel``.

    The activation scales come from each batch, so a text's vector moves a little (cosine about
    0.99) with the texts batched beside it; static int8 (``openvino-int8``) does not.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Without VNNI, u8 x s8 products can saturate the 16-bit intermediate: 7-bit weights avoid it.
    reduce_range = kernel in ("avx2", "avx512")
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range)
    return {"kernel": kernel, "scheme": "dynamic", "weights": "int8 per channel", "reduce_range": reduce_range}


def _openvino_int8(model, calibration: list[dict], target: Path) -> dict:
    import nncf
    import openvino as ov

    dataset = nncf.Dataset(calibration)
    quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    return {
        "kernel": "openvino",
        "scheme": "static",
        "preset": "performance, transformer",
        "calibration_texts": len(calibration),
    }


def _require(module: str, extra: str, backend: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"backend {backend!r} needs {module}: pip install 'embedcache[{extra}]'")


def export_key(source: dict, backend: str, kernel: str | None) -> str:
    """The directory name of an export: the source model's weights and modules, the backend and the tools' versions."""
    tools = {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino", "nncf")}[backend.split("-")[0]]
    blob = {
        "source": {k: source[k] for k in ("weights_sha256", "modules", "dim")},
        "backend": backend,
        "kernel": kernel,
        "format": EXPORT_FORMAT,
        "versions": {d: dist_version(d) for d in ("torch", *tools)},
    }
    return f"{backend}-{json_sha256(blob)[:20]}"


def exported(model, source: dict, backend: str, features, calibration: list[str] | None) -> Path:
    """The directory of ``model``'s export for ``backend``, made now if absent.

    ``features(texts)`` tokenizes texts as the encoder does; ``calibration`` is needed only to
    make an ``openvino-int8`` export.
    """
    _require("onnxruntime" if backend.startswith("onnx") else "openvino", backend.split("-")[0], backend)
    kernel = int8_kernel() if backend == "onnx-int8" else None
    target = export_home() / export_key(source, backend, kernel)
    if (target / "export.json").exists():
        return target
    if backend == "openvino-int8":
        _require("nncf", "openvino", backend)
        if not calibration:
            raise ParameterError(
                "backend 'openvino-int8' is calibrated on your own texts when it is first exported: pass "
                "calibration=[a few hundred of your texts] to load_encoder (embedcache precompute uses the corpus)"
            )
    with writing(target.parent, "creating the export directory"):
        target.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(target.parent, os.W_OK):
            raise PermissionError(13, "Permission denied", str(target.parent))
    began = time.perf_counter()
    # Materialised atomically (fsynced, then renamed): a crash leaves no half export. Two processes exporting
    # at once both finish; the later rename wins, and each runtime describes the export it then reads.
    with atomic_directory(target) as tmp:
        onnx_path = tmp / "model.onnx"
        _export_onnx(model, features(["An example sentence to trace the graph.", "Another one."]), onnx_path)
        settings = {}
        if backend == "onnx-int8":
            settings = _onnx_int8(onnx_path, tmp / "model.int8.onnx", kernel or int8_kernel())
            (tmp / "model.int8.onnx").replace(onnx_path)
        elif backend.startswith("openvino"):
            import openvino as ov

            graph = ov.convert_model(str(onnx_path))
            onnx_path.unlink()
            if backend == "openvino-int8":
                sample = calibration_sample(calibration or [])
                settings = _openvino_int8(graph, [_one(features([t])) for t in sample], tmp / "model.xml")
                settings["calibration_sha256"] = hashlib.sha256("\n".join(sample).encode()).hexdigest()
            else:
                ov.save_model(graph, str(tmp / "model.xml"), compress_to_fp16=False)
        record = {
            "backend": backend,
            "int8": settings or None,
            "source": source["weights_sha256"],
            "sha256": hash_files([p for p in tmp.iterdir() if p.name != "export.json"]),
            "export_seconds": round(time.perf_counter() - began, 1),
            "format": EXPORT_FORMAT,
        }
        (tmp / "export.json").write_text(json.dumps(record, indent=2))
    return target


def calibration_sample(texts: list[str]) -> list[str]:
    """Up to CALIBRATION_TEXTS distinct non-empty texts, spread evenly over ``texts`` (deterministic)."""
    distinct = list(dict.fromkeys(t for t in texts if t and t.strip()))
    if len(distinct) <= CALIBRATION_TEXTS:
        return distinct
    picks = np.linspace(0, len(distinct) - 1, CALIBRATION_TEXTS).round().astype(int)
    return [distinct[i] for i in picks]


def _one(features: dict) -> dict:
    return {k: v.numpy() for k, v in features.items() if hasattr(v, "numpy")}
