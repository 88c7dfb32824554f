"""Runtimes: one batch of tokenizer output (NumPy arrays, padded to the batch's longest text) in, its sentence
embeddings out; torch (the model itself), ONNX Runtime or OpenVINO (an export, on the CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import EncoderError, ParameterError
from .export import BACKENDS, exported, read_export
from .machine import cpu_cores, dist_version


class TorchRuntime:
    """The sentence-transformers model itself, on its device; batches are pinned and copied without blocking on a GPU."""

    name = "torch"

    def __init__(self, model, device: str) -> None:
        self.model = model
        self.device = device
        self.gpu = str(device).startswith("cuda")

    def host(self, batch: dict) -> dict:
        """Tensors ready to copy: pinned on a GPU machine (this runs in the producer thread)."""
        import torch

        tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
        if self.gpu:
            tensors = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}
        return tensors

    def on_device(self, batch: dict) -> dict:
        import torch

        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def __call__(self, batch: dict) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(self.on_device(batch))["sentence_embedding"]
            # Half-precision vectors come back as they are (half the bytes over the bus), widened here.
            return out.to("cpu").float().numpy()

    def with_layers(self, batch: dict, layers: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The sentence vectors and, from the same forward pass, the masked means of the hidden states
        ``layers`` (see ``embedcache.encoders.layers``)."""
        import torch

        from ..layers import masked_means

        config = self.model[0].auto_model.config
        before = config.output_hidden_states
        config.output_hidden_states = True  # the encoder runs one call at a time: no other call sees this
        try:
            with torch.inference_mode():
                features = self.model(self.on_device(batch))
                means = masked_means(features["all_layer_embeddings"], features["attention_mask"], layers)
                return features["sentence_embedding"].to("cpu").float().numpy(), means.to("cpu").numpy()
        finally:
            config.output_hidden_states = before

    def describe(self) -> dict | None:
        return None  # the model's own description says it all


class OnnxRuntime:
    """An ONNX export run by ONNX Runtime on the CPU, with every core."""

    def __init__(self, directory: Path, name: str, source: str | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_cores()
        self.name = name
        self.export = read_export(directory, name, source)
        self.session = ort.InferenceSession(str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def host(self, batch: dict) -> dict:
        return {k: batch[k] for k in self.inputs}

    def __call__(self, batch: dict) -> np.ndarray:
        return self.session.run(None, batch)[0]

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "export_sha256": self.export["sha256"],
            "int8": self.export.get("int8"),
            "versions": {"onnxruntime": dist_version("onnxruntime")},
        }


class OpenVinoRuntime:
    """An OpenVINO export compiled for the CPU; ``precision`` is the inference precision of its float operations."""

    def __init__(self, directory: Path, name: str, precision: str, source: str | None = None) -> None:
        import openvino as ov

        self.name = name
        self.precision = precision
        self.export = read_export(directory, name, source)
        core = ov.Core()
        model = core.read_model(str(directory / "model.xml"))
        self.compiled = core.compile_model(
            model,
            "CPU",
            {
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": cpu_cores(),
                "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[precision],
            },
        )
        self.inputs = [i.get_any_name() for i in self.compiled.inputs]

    def host(self, batch: dict) -> dict:
        return {k: batch[k] for k in self.inputs}

    def __call__(self, batch: dict) -> np.ndarray:
        return self.compiled(batch)[0]

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "export_sha256": self.export["sha256"],
            "int8": self.export.get("int8"),
            "inference_precision": self.precision,
            "versions": {"openvino": dist_version("openvino"), "nncf": dist_version("nncf")},
        }


# -- exports ---------------------------------------------------------------------------------------


_VERIFIED: dict[str, tuple] = {}  # export directory -> stamp of its files when their hash last matched (this process)


def load_runtime(
    model, source: dict, backend: str, device: str, precision: str, features, calibration: list[str] | None
):
    """The runtime for ``backend``; exports run on the CPU only."""
    if backend not in BACKENDS:
        raise ParameterError(f"backend must be one of {', '.join(BACKENDS)} or 'auto', got {backend!r}")
    if backend == "torch":
        return TorchRuntime(model, device)
    if device != "cpu":
        raise ParameterError(
            f"backend {backend!r} runs on the CPU; on device {device!r} use backend 'torch' "
            "(bf16 or fp16 by default on a GPU)"
        )
    if precision == "fp16" or (precision == "bf16" and not backend.startswith("openvino")):
        raise ParameterError(
            f"backend {backend!r} runs in fp32{' or bf16' if backend.startswith('openvino') else ''}, "
            f"got precision {precision!r}"
        )
    if any(getattr(module, "include_prompt", True) is False for module in model):
        raise EncoderError(
            "this model leaves the prompt out of its pooling, which the exported backends do not "
            "reproduce; use backend 'torch'"
        )
    directory = exported(model, source, backend, features, calibration)
    if backend.startswith("onnx"):
        return OnnxRuntime(directory, backend, source["weights_sha256"])
    return OpenVinoRuntime(directory, backend, precision, source["weights_sha256"])
