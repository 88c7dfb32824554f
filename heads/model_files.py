"""A saved model directory: ``config.json`` and ``model.safetensors``, written whole or not at all, checked on read.

Nothing is unpickled.  The config records the weights' SHA-256; reading checks
it, the config's fields, and the tensors' shapes against what the config says
(computed without allocating them), so a damaged or altered directory is a
``ModelError`` naming the file and field, never a crash or a wrong model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as save_tensors

from embedcache import EmbedcacheError, ParameterError
from embedcache.toolkit import atomic_directory, check_output, installed_version

from .config import TrainConfig
from .ensemble import Ensemble, member_tensors
from .head_types import head_type, layer_weights, reading_layers

REQUIRED = ("head", "params", "dim", "sides", "columns", "labels", "label_mean", "label_std", "encoder")


class ModelError(EmbedcacheError, ValueError):
    """A saved model directory that is incomplete, damaged or inconsistent; the message names the file and field."""


def versions() -> dict:
    """Python's version and those of the libraries a model was trained with (the ones installed)."""
    dists = ("embedcache", "torch", "numpy", "scikit-learn", "safetensors", "sentence-transformers")
    found = {d: installed_version(d) for d in dists}
    return {"python": platform.python_version(), **{d: v for d, v in found.items() if v != "absent"}}


def write_model(directory, config: dict, tensors: dict, overwrite: bool = False, move: dict | None = None) -> Path:
    """Write ``config`` and ``tensors`` to a temporary directory that replaces ``directory`` only when whole.

    ``move`` maps names inside the new directory to paths moved there (a fine-tuned model's ``encoder/``).
    """
    directory = check_output(directory, overwrite=overwrite, flag="model directory", kind="model")
    weights = save_tensors(tensors)
    config = {**config, "weights_sha256": hashlib.sha256(weights).hexdigest(), "versions": versions()}
    with atomic_directory(directory) as tmp:
        for name, path in (move or {}).items():
            os.replace(path, tmp / name)
        # written through open(), which honours the umask (save_file leaves 0600: a service account could not read it)
        (tmp / "model.safetensors").write_bytes(weights)
        (tmp / "config.json").write_text(json.dumps(config, indent=1, allow_nan=True) + "\n")
    return directory


def read_model(directory) -> tuple[dict, dict]:
    """The checked config and the tensors of a saved model."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: no such model directory")
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise ModelError(f"{directory} is not a saved head model: {name} is missing")
    where = directory / "config.json"
    try:
        config = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{where}: not readable JSON ({e}); train the model again") from None
    check_config(config, where)
    weights = (directory / "model.safetensors").read_bytes()
    recorded = config.get("weights_sha256")  # absent in models saved before it was recorded
    if recorded is not None and hashlib.sha256(weights).hexdigest() != recorded:
        raise ModelError(
            f"{directory / 'model.safetensors'} does not match the checksum in {where} (field "
            "'weights_sha256'): the directory is half-written or altered; train the model again"
        )
    try:
        from safetensors.torch import load as load_tensors

        tensors = load_tensors(weights)
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types on damaged bytes
        raise ModelError(f"{directory / 'model.safetensors'} cannot be read ({e}); train the model again") from None
    return config, tensors


def check_shapes(tensors: dict, expected: dict, directory, config: dict, head_config: dict) -> None:
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != expected:
        name = next((k for k in expected if found.get(k) != expected[k]), next(iter(set(found) - set(expected)), "?"))
        sizes = ", ".join(
            f"{k} {v}" for k, v in head_config.items() if k not in ("sides", "n_outputs") and isinstance(v, int)
        )
        raise ModelError(
            f"{directory}: tensor {name!r} has shape {found.get(name)} in model.safetensors, but "
            f"config.json (head {config['head']!r}, {sizes}, {len(config['labels'])} labels) needs "
            f"{expected.get(name)}; the files do not belong together"
        )


def _bad(where, field, expected, value):
    raise ModelError(
        f"{where}: field {field!r} must be {expected}, found {json.dumps(value)[:60]}; train the model again"
    )


def check_config(config, where) -> None:
    """A model's config.json: every field the model needs, of the right type and range (ModelError naming it)."""
    from .head_types import HEAD_TYPES

    if not isinstance(config, dict):
        _bad(where, "(top level)", "a JSON object", config)
    for field in REQUIRED:
        if field not in config:
            raise ModelError(f"{where}: field {field!r} is missing; train the model again")
    if config["head"] not in HEAD_TYPES:
        _bad(where, "head", f"one of {', '.join(HEAD_TYPES)}", config["head"])
    _check_params(config["params"], where)
    dim = config["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        _bad(where, "dim", "a whole number >= 1", dim)
    sides = config["sides"]
    if (
        not isinstance(sides, list)
        or not sides
        or sides[0] != "text"
        or not set(sides) <= {"text", "pair", "condition"}
        or len(set(sides)) != len(sides)
    ):
        _bad(where, "sides", "a list starting with 'text', of 'text', 'pair', 'condition'", sides)
    labels = config["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        _bad(where, "labels", "a non-empty list of column names", labels)
    for field, positive in (("label_mean", False), ("label_std", True)):
        values = config[field]
        if not (
            isinstance(values, list)
            and len(values) == len(labels)
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
                for v in values
            )
        ):
            _bad(where, field, f"{len(labels)} finite number(s){' > 0' if positive else ''}", values)
    if not isinstance(config["encoder"], dict) or not isinstance(config["encoder"].get("fingerprint"), str):
        _bad(where, "encoder", "an object with a string 'fingerprint'", config["encoder"])
    finetuned = config.get("finetuned")
    if finetuned is not None and not (isinstance(finetuned, dict) and isinstance(finetuned.get("encoder"), str)):
        _bad(where, "finetuned", "null or an object with a string 'encoder' (a folder inside the model)", finetuned)
    if not isinstance(config["columns"], dict):
        _bad(where, "columns", "an object", config["columns"])
    encoders = config.get("encoders")
    if encoders is not None and not (
        isinstance(encoders, list)
        and len(encoders) >= 2
        and all(isinstance(e, dict) and isinstance(e.get("fingerprint"), str) for e in encoders)
    ):
        _bad(where, "encoders", "null or a list of 2 or more objects with a string 'fingerprint'", encoders)
    members = config.get("ensemble")
    if members is not None and not (isinstance(members, int) and not isinstance(members, bool) and members >= 2):
        _bad(where, "ensemble", "null or a whole number >= 2 (the members of an ensemble)", members)
    layers = config.get("layers")
    if layers is not None and not (
        isinstance(layers, list) and layers and all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
    ):
        _bad(where, "layers", "null or a non-empty list of layer indices", layers)
    _check_head_config(config, where)


ADDED_SETTINGS = {
    "features": "final",
    "ensemble": 1,
}  # TrainConfig fields newer than some saved models, with their value then


def _check_params(params, where) -> None:
    known = [f for f in TrainConfig.__dataclass_fields__]
    # settings added since a model was saved take their defaults (the model was trained as they say)
    if isinstance(params, dict):
        params = {**{k: v for k, v in ADDED_SETTINGS.items() if k not in params}, **params}
    if not isinstance(params, dict) or set(params) != set(known):
        unknown = sorted(set(params) - set(known)) if isinstance(params, dict) else []
        _bad(
            where,
            "params",
            f"an object with exactly {', '.join(sorted(known))}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
            params,
        )
    try:
        TrainConfig.from_dict(params).check()
    except (ParameterError, TypeError, ValueError) as e:
        raise ModelError(f"{where}: field 'params': {e}; train the model again") from None


def _check_head_config(config: dict, where) -> None:
    """``head_config`` (absent in models saved before it was recorded) agrees with the training settings it was built from."""
    head = config.get("head_config")
    if head is None:
        return
    if not isinstance(head, dict):
        _bad(where, "head_config", "an object", head)
    for key, value in config["params"].items():
        if key in head and head[key] != value:
            raise ModelError(
                f"{where}: field 'head_config' has {key} {json.dumps(head[key])[:40]}, but field 'params' "
                f"has {json.dumps(value)[:40]}: the fields do not belong together; train the model again"
            )


def saved_unit(config: dict, tensors: dict, settings: TrainConfig, directory: Path):
    """The trained head (an Ensemble of them, for a model trained with ``ensemble``) of a saved model, its
    tensors' shapes checked against its config before any is allocated."""
    members = config.get("ensemble")
    if not members:
        return _saved_head(config, config.get("head_config"), tensors, settings, directory)
    saved = (config.get("head_config") or {}).get("members")
    if not (isinstance(saved, list) and len(saved) == members and all(isinstance(c, dict) for c in saved)):
        raise ModelError(
            f"{directory / 'config.json'}: field 'head_config' must hold the configs of the {members} members "
            "of the ensemble ('members'); train the model again"
        )
    units = [_saved_head(config, saved[k], member_tensors(tensors, k), settings, directory) for k in range(members)]
    left = set(tensors) - {f"member{k}.{name}" for k in range(members) for name in member_tensors(tensors, k)}
    if left:
        raise ModelError(
            f"{directory}: tensor {sorted(left)[0]!r} belongs to no member; the files do not belong together"
        )
    return Ensemble(units)


def _saved_head(config: dict, saved: dict | None, tensors: dict, settings: TrainConfig, directory: Path):
    dim, sides, n_outputs = config["dim"], tuple(config["sides"]), len(config["labels"])
    kind = head_type(config["head"])
    with torch.device("meta"):  # shapes only: a tampered width must not allocate terabytes
        built_unit = kind.build(dim, sides, n_outputs, settings)
        if config.get("layers"):
            built_unit = reading_layers(built_unit, len(config["layers"]))
        built = built_unit.config()
        # the model's own fields (dim, sides, labels) are the truth; models saved before head_config have none
        saved = saved or {"alphas": config.get("ridge_alphas")}
        head_config = {k: v for k, v in {**built, **saved}.items() if k in built}
        head_config.update(dim=dim, sides=list(sides), n_outputs=n_outputs)
        try:
            unit = kind.from_config(head_config)  # on the meta device: load_state allocates it, drawing nothing random
        except (TypeError, ValueError, KeyError) as e:
            raise ModelError(
                f"{directory / 'config.json'}: field 'head_config' does not build a {config['head']!r} "
                f"head ({e}); train the model again"
            ) from None
        expected = unit.state_shapes()
    check_shapes(tensors, expected, directory, config, head_config)
    return unit.load_state(tensors)


def model_config(model) -> dict:
    """What ``config.json`` records of a trained model (see the module docstring)."""
    return {
        "head": model.head_,
        "head_config": model.unit_.config(),
        "params": model.params(),
        "conditions": getattr(model, "conditions_", None),
        "validation_rows": getattr(model, "validation_rows_", None),
        "dim": int(model.dim_),
        "sides": list(model.sides_),
        "columns": model.columns_,
        "labels": model.labels_,
        "label_mean": model.mean_.tolist(),
        "label_std": model.std_.tolist(),
        "encoder": model.encoder_,
        "validation": model.validation_,
        "history": model.history_,
        "finetuned": getattr(model, "finetuned_", None),
        "calibration": getattr(model, "calibration_", None),
        "layers": None if getattr(model, "layers_", None) is None else list(model.layers_),
        "layer_weights": layer_weights(model.unit_),
        "ensemble": len(model.unit_.members) if isinstance(model.unit_, Ensemble) else None,
        "leaderboard": getattr(model, "leaderboard_", None),
        "encoders": getattr(model, "encoders_", None),
    }


def trained_fields(config: dict) -> dict:
    """The keyword arguments of ``HeadModel.from_trained`` that a read ``config.json`` gives."""
    return {
        "sides": tuple(config["sides"]),
        "dim": config["dim"],
        "columns": config["columns"],
        "labels": config["labels"],
        "mean": config["label_mean"],
        "std": config["label_std"],
        "encoder": config["encoder"],
        "history": config.get("history", []),
        "finetuned": config.get("finetuned"),
        "layers": config.get("layers"),
        "encoders": config.get("encoders"),
    }


def load_model(cls, directory):
    """A ``cls`` (HeadModel) from a saved directory; a missing, damaged or inconsistent file is a ModelError
    naming the file and field."""
    directory = Path(directory)
    config, tensors = read_model(directory)
    settings = TrainConfig.from_dict(config["params"])
    unit = saved_unit(config, tensors, settings, directory)
    model = cls.from_trained(settings, config["head"], unit, directory=directory, **trained_fields(config))
    model.conditions_, model.validation_rows_ = config.get("conditions"), config.get("validation_rows")
    model.validation_, model.calibration_ = config.get("validation"), config.get("calibration")
    model.leaderboard_ = config.get("leaderboard")
    return model


def set_trained(
    model,
    head: str,
    unit,
    *,
    sides,
    dim: int,
    columns: dict,
    labels,
    mean,
    std,
    encoder: dict,
    history=(),
    finetuned: dict | None = None,
    directory=None,
    layers=None,
    encoders=None,
):
    """``model`` (a new HeadModel) given the fitted state of a head trained elsewhere or loaded; returns it.

    ``unit`` is the trained head of type ``head``; ``encoder`` records the fingerprint of the vectors it
    reads; ``finetuned`` (with ``directory``) says where its own encoder is; ``layers``: the hidden states
    whose layer vectors it reads (None: sentence vectors); ``encoders``: the records of several encoders whose
    vectors it reads side by side, in order (None: one encoder's).
    """
    model.head_, model.unit_, model.sides_, model.dim_ = head, unit, tuple(sides), dim
    model.columns_, model.labels_ = columns, list(labels)
    model.mean_, model.std_ = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
    model.encoder_, model.history_, model.finetuned_ = encoder, list(history), finetuned
    model.directory_ = None if directory is None else Path(directory)
    model.conditions_, model.validation_rows_, model.validation_, model.calibration_ = None, None, None, None
    model.layers_ = None if layers is None else tuple(layers)
    model.encoders_ = encoders
    model.layer_weights_ = layer_weights(unit)
    return model
