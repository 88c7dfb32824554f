"""``backend="auto"``: measure each backend on this machine and keep the fastest that stays close to fp32.

The candidates are torch fp32, torch bf16 where the CPU computes bf16 natively,
and whichever of the ONNX Runtime and OpenVINO backends are installed (OpenVINO
also with bf16 inference on such CPUs), except ``onnx-int8``: its dynamic
quantization scales activations per batch, so a text's vector would depend on
the texts batched with it, and a cache promises one vector per text.  Each encodes the caller's calibration
texts; a candidate qualifies when its vectors keep a mean cosine of at least
``MIN_COSINE`` with torch fp32 ones, and the fastest qualifying one wins.  The
choice is recorded per machine and model under ``export_home()``, so the next
``auto`` load on this machine costs no measurement.  On a GPU, ``auto`` is torch
in half precision: the exports run on the CPU.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import platform
import time
from pathlib import Path

import numpy as np

from ...errors import ParameterError
from ...files import atomic_write_json, json_sha256
from ..device import resolve_precision
from .export import calibration_sample, export_home
from .machine import cpu_cores, cpu_flags, cpu_has_bf16, cpu_info, dist_version
from .sessions import TorchRuntime, load_runtime

MIN_COSINE = 0.99
TIMED_TEXTS = 300


def _machine() -> dict:
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")) or f in ("asimd", "sve"))
    return {
        "cpu": cpu_info("model name") or platform.processor(),
        "machine": platform.machine(),
        "cores": cpu_cores(),
        "flags": flags,
        "versions": {d: dist_version(d) for d in ("torch", "onnxruntime", "openvino", "nncf")},
    }


def record_path(source: dict, machine: dict) -> Path:
    blob = {
        "weights": source["weights_sha256"],
        "modules": source["modules"],
        "max_length": source["max_length"],
        "machine": machine,
    }
    return export_home().parent / "auto" / f"{json_sha256(blob)[:20]}.json"


def candidates(device: str) -> list[tuple[str, str]]:
    """(backend, precision) pairs worth measuring on this machine, the exact one first."""
    found = [("torch", "fp32")]
    bf16 = cpu_has_bf16()
    if bf16:
        found.append(("torch", "bf16"))
    if importlib.util.find_spec("onnxruntime"):
        # Not onnx-int8: it scales activations per batch, so a text's vector would depend on its batch-mates.
        found += [("onnx", "fp32")]
    if importlib.util.find_spec("openvino"):
        found += [("openvino", "fp32")] + ([("openvino", "bf16")] if bf16 else [])
        if importlib.util.find_spec("nncf"):
            found += [("openvino-int8", "fp32")] + ([("openvino-int8", "bf16")] if bf16 else [])
    return found


def _measure(encoder, runtime, texts: list[str]) -> tuple[np.ndarray, float]:
    """Vectors of ``texts`` through ``runtime`` and the best texts/s of two timed passes after a warm-up."""
    encoder.runtime = runtime
    encoder.encode_uncounted(texts[:16])
    best = float("inf")
    for _ in range(2):
        began = time.perf_counter()
        vectors = encoder.encode_uncounted(texts)
        best = min(best, time.perf_counter() - began)
    return vectors, len(texts) / best


def choose_backend(encoder, calibration: list[str] | None) -> dict:
    """Pick ``encoder``'s backend and precision (its model still fp32 torch) on this machine; return the record."""
    if encoder.device != "cpu":
        return {"backend": "torch", "precision": resolve_precision("auto", encoder.device), "measured": None}
    machine = _machine()
    source = encoder.source()
    path = record_path(source, machine)
    if path.exists():
        record = json.loads(path.read_text())
        if (record["backend"], record["precision"]) in candidates(encoder.device):
            return record
    texts = calibration_sample(calibration or [])[:TIMED_TEXTS]
    if len(texts) < 16:
        raise ParameterError(
            "backend 'auto' measures the backends on your own texts the first time on a machine: "
            "pass calibration=[a few hundred of your texts] to load_encoder (embedcache precompute "
            f"uses the corpus); got {len(texts)} distinct texts"
        )
    from tqdm.auto import tqdm

    measured, reference = [], None
    # the first time on a machine this exports and times every candidate (a minute or two): say so as it goes
    bar = tqdm(candidates(encoder.device), desc="backend auto: exporting and timing", unit="backend", disable=None)
    for backend, precision in bar:
        bar.set_postfix_str(f"{backend} {precision}")
        if backend == "torch":
            model = encoder.model if precision == "fp32" else copy.deepcopy(encoder.model).to(_torch_dtype(precision))
            runtime = TorchRuntime(model, "cpu")
        else:
            runtime = load_runtime(encoder.model, source, backend, "cpu", precision, encoder.features, calibration)
        vectors, rate = _measure(encoder, runtime, texts)
        reference = vectors if reference is None else reference  # the first candidate is torch fp32
        cosines = np.sum(vectors * reference, 1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))
        measured.append(
            {
                "backend": backend,
                "precision": precision,
                "texts_per_s": round(rate, 1),
                "mean_cosine": round(float(cosines.mean()), 5),
                "min_cosine": round(float(cosines.min()), 5),
            }
        )
    fine = [m for m in measured if m["mean_cosine"] >= MIN_COSINE]
    best = max(fine, key=lambda m: m["texts_per_s"])
    record = {
        "backend": best["backend"],
        "precision": best["precision"],
        "measured": measured,
        "rule": f"fastest with mean cosine >= {MIN_COSINE} to torch fp32 on {len(texts)} of your texts",
        "machine": machine,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return record


def _torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
