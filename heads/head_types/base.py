"""What every head type provides, and ``TorchHead``: the shared part of the neural ones.

A head type is a class with:

- ``build(dim, sides, n_outputs, settings)``: a new, untrained head (``settings`` is a ``TrainConfig``);
- ``config()`` -> a JSON object, and ``from_config(config)``: the same head, untrained;
- ``state()`` -> named tensors (saved as safetensors), ``load_state(tensors)``,
  and ``state_shapes()``: the shapes ``load_state`` expects (checked before anything is allocated);
- ``fit(train, y, val, y_val, settings, *, scale, sample_weight, device, progress)`` -> history (a list of dicts);
  labels come standardised, ``scale`` turns their errors back into label units;
- ``predict(inputs)`` -> ``(n, n_outputs)`` float64 outputs on the standardised scale;
- ``check_sides(sides)``: refuse inputs it cannot read, before anything is encoded;
- ``joint``: True when the head reads both texts in one sequence through the encoder (only fine-tuning trains it).

``Head`` gives the defaults of the last two; ``TorchHead`` everything else for a torch module.

Registering the class under a name (``heads.head_types.register_head``) is all it takes for
``HeadModel``, ``heads train``, ``heads predict`` and saving and loading to use it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from embedcache import ParameterError

from ..train import fit as fit_module
from ..train import predict_scaled, seeded, to_device
from .layers import ScalarMix, mix_tables


class Head:
    """What head types share by default: they read no joint sequence and need a text side first."""

    joint = False

    def with_layers(self, n_layers: int) -> Head:
        """This head reading ``(m, n_layers, dim)`` layer vectors instead of ``(m, dim)`` sentence vectors."""
        raise ParameterError(f"the {type(self).__name__} head cannot read layer vectors: use --features final")

    def layer_weights(self) -> list[float] | None:
        """What a head that reads layer vectors learned of each layer's worth (None where it has nothing to say)."""
        return None

    @classmethod
    def check_sides(cls, sides) -> None:
        if not sides or sides[0] != "text":
            raise ParameterError(f"a head needs a text input, got {list(sides)}")


class TorchHead(Head, nn.Module):
    """A neural head: ``forward(tables, index) -> (batch, n_outputs)``, where ``tables[side]`` holds the
    distinct vectors of an input side and ``index[side]`` the rows of the batch into it.

    Subclasses take ``(dim, sides, width, dropout, n_outputs, shared)``; the rest comes from here.
    """

    mix_start = "equal"  # how a mix of layer vectors starts (see ScalarMix)

    def __init__(
        self, dim: int, sides=("text",), width: int = 256, dropout: float = 0.1, n_outputs: int = 1, shared: bool = True
    ):
        super().__init__()
        self._config = {
            "dim": dim,
            "sides": list(sides),
            "width": width,
            "dropout": dropout,
            "n_outputs": n_outputs,
            "shared": shared,
        }

    @classmethod
    def build(cls, dim: int, sides, n_outputs: int, settings) -> TorchHead:
        return cls(
            dim,
            tuple(sides),
            width=settings.width,
            dropout=settings.dropout,
            n_outputs=n_outputs,
            shared=settings.shared,
        )

    def with_layers(self, n_layers: int) -> TorchHead:
        """Read layer vectors: a ``ScalarMix`` turns each table into one vector per text before ``forward``."""
        self.mix = ScalarMix(n_layers, self.mix_start)
        self._config["layers"] = n_layers
        self.register_forward_pre_hook(mix_tables)
        return self

    def layer_weights(self) -> list[float] | None:
        mix = getattr(self, "mix", None)
        return None if mix is None or mix.logits.is_meta else mix.weights()

    def mixed(self, tables: dict) -> dict:
        """The tables as ``forward`` sees them (layer vectors mixed)."""
        mix = getattr(self, "mix", None)
        return tables if mix is None else {s: mix(t) for s, t in tables.items()}

    def config(self) -> dict:
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict) -> TorchHead:
        layers = config.get("layers")
        head = cls(**{**{k: v for k, v in config.items() if k != "layers"}, "sides": tuple(config["sides"])})
        return head.with_layers(layers) if layers else head

    def state(self) -> dict:
        return {k: v.contiguous() for k, v in self.state_dict().items()}

    def load_state(self, tensors: dict) -> TorchHead:
        if any(p.is_meta for p in self.parameters()):
            self.to_empty(device="cpu")  # built on the meta device: memory without drawing initial weights
        self.load_state_dict(tensors)
        return self.eval()

    def state_shapes(self) -> dict:
        with torch.device("meta"):  # shapes only: a tampered width must not allocate terabytes
            return {k: tuple(v.shape) for k, v in type(self).from_config(self.config()).state_dict().items()}

    def prepare(self, tables: dict, index: dict, y) -> None:
        """Set up from the training data before the first step (the two-tower starts from the cosine)."""

    def fit(self, train, y, val, y_val, settings, *, scale, sample_weight=None, device="cpu", progress=True) -> list:
        with seeded(settings.seed, device):  # the initial weights too: a fixed seed gives identical models
            self.load_state(type(self).from_config(self.config()).state_dict())
            tables, index = to_device(train.tables, train.index, "cpu")
            with torch.no_grad():
                tables = self.mixed(tables)
            self.prepare(tables, index, y)
            history = fit_module(
                self,
                train.tables,
                train.index,
                y,
                None if val is None else val.index,
                y_val,
                val_tables=None if val is None else val.tables,
                scale=scale,
                loss=settings.loss,
                epochs=settings.epochs,
                lr=settings.lr,
                weight_decay=settings.weight_decay,
                batch_size=settings.batch_size,
                patience=settings.patience,
                seed=settings.seed,
                device=device,
                sample_weight=sample_weight,
                progress=progress,
            )
        self.to("cpu")
        return history

    def predict(self, inputs) -> np.ndarray:
        # float64 on the CPU: a row's prediction does not depend on what else is in its batch
        tables, index = to_device(inputs.tables, inputs.index, "cpu")
        module = copy.deepcopy(self).to("cpu", torch.float64)
        return predict_scaled(module, {s: t.double() for s, t in tables.items()}, index).numpy()
