"""Fine-tuning: the encoder trained end to end with a head, through the transformers Trainer.

The heads are the modules ``heads train`` uses (concat, two-tower) on vectors
that the encoder now computes per batch, plus ``cross``: both texts in one
sequence and a linear output (the NLI-to-regression recipe).  The Trainer
brings mixed precision, gradient accumulation and checkpointing, checkpoints,
early stopping with the best checkpoint restored, and multi-GPU launch
(``torchrun``/``accelerate launch``).  Batches are padded to their longest text
and drawn from length-grouped buckets; the encoder learns at a lower rate than
the head.  The result is a HeadModel directory with the fine-tuned encoder
inside (``encoder/``, a sentence-transformers directory), so ``heads predict``
and ``heads evaluate`` use it like a frozen head.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from embedcache import MissingDependencyError, ParameterError, WriteError
from embedcache.toolkit import atomic_directory, check_not_input, check_output, is_model_directory

from ..config import FINETUNE_DEFAULTS, FinetuneConfig, TrainConfig, finetune_defaults
from ..data import grouped_split, load_labels, side_texts, sides_of
from ..head_types import TorchHead, head_type, resolve_head
from ..model import HeadModel
from ..train import seeded
from ..training_rows import check_label_values, label_scaling
from .backbone import Backbone
from .network import FineTuneNetwork
from .trainer import run_trainer, saved_checkpoints, third_party_deprecations_off, work_directory

# what heads finetune trains when not told otherwise: a few epochs suffice for a pretrained encoder


def _texts(df: pd.DataFrame, columns: dict, path) -> dict[str, np.ndarray]:
    return {side: np.asarray(t, dtype=object) for side, t in side_texts(df, columns, path).items()}


def _add_lora(backbone: Backbone, r: int) -> None:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise MissingDependencyError(
            "lora (--lora) needs peft: pip install peft (or pip install -e '.[finetune]')"
        ) from e
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.1, target_modules="all-linear")
    with third_party_deprecations_off():
        backbone.model = get_peft_model(backbone.model, config)


def _configs(
    config: TrainConfig | None, encoder: FinetuneConfig | None, settings: dict, sides: tuple
) -> tuple[TrainConfig, FinetuneConfig]:
    """The two configs with ``settings`` (field names of either) applied, checked; ``auto`` resolved for ``sides``."""
    config, encoder = config or FINETUNE_DEFAULTS, encoder or FinetuneConfig()
    head_fields, encoder_fields = TrainConfig.__dataclass_fields__, FinetuneConfig.__dataclass_fields__
    unknown = sorted(set(settings) - set(head_fields) - set(encoder_fields))
    if unknown:
        raise ParameterError(
            f"unknown setting {', '.join(unknown)}; settings are the fields of TrainConfig and FinetuneConfig"
        )
    config = config.replace(**{k: v for k, v in settings.items() if k in head_fields})
    encoder = FinetuneConfig(**{**encoder.to_dict(), **{k: v for k, v in settings.items() if k in encoder_fields}})
    config.check(zero_lr=True)  # lr 0 freezes the head: the encoder alone learns
    encoder.check()
    if config.ensemble != 1:
        raise ParameterError("fine-tuning trains one encoder with one head: --ensemble is for heads on a cache")
    if config.features != "final":
        raise ParameterError(
            "fine-tuning trains the encoder through its sentence vectors: --features layers is for heads on a cache"
        )
    config = config.replace(head=resolve_head(config.head, sides))
    if not issubclass(head_type(config.head), TorchHead):
        raise ParameterError(
            f"head must be a neural head to fine-tune with the encoder (one of "
            f"{', '.join(n for n, c in _torch_heads())}), got {config.head!r}"
        )
    head_type(config.head).check_sides(sides)
    return finetune_defaults(config, encoder)


def _torch_heads():
    from ..head_types import HEAD_TYPES

    return [(n, c) for n, c in HEAD_TYPES.items() if issubclass(c, TorchHead)]


def _split(data, val_data, label_cols, columns, config: TrainConfig, paths) -> tuple:
    """(texts, y, validation texts, validation y, validation table): the validation file, or a grouped split."""
    y, texts = load_labels(data, label_cols, paths[0]), _texts(data, columns, paths[0])
    check_label_values(y, config.label_range, label_cols, paths[0])
    if val_data is not None:
        y_val, val_texts = load_labels(val_data, label_cols, paths[1]), _texts(val_data, columns, paths[1])
        check_label_values(y_val, config.label_range, label_cols, paths[1])
        return texts, y, val_texts, y_val, val_data
    groups = np.unique(texts["text"], return_inverse=True)[1].ravel()
    train_rows, val_rows = grouped_split(groups, config.val_fraction, config.seed)
    val_texts, y_val = {s: t[val_rows] for s, t in texts.items()}, y[val_rows]
    return {s: t[train_rows] for s, t in texts.items()}, y[train_rows], val_texts, y_val, data.iloc[val_rows]


def _head(backbone: Backbone, config: TrainConfig, sides: tuple, texts: dict, y, label_cols, init_head, path):
    """The head to train and the label scaling: from ``init_head`` (a frozen head on this encoder), else new and
    prepared on the encoder's initial vectors of a sample (the two-tower starts from their calibrated cosine)."""
    if init_head is not None:
        warm = HeadModel.load(init_head)
        _check_warm_start(warm, config.head, sides, backbone.dim, label_cols, init_head)
        mean, std = warm.mean_, warm.std_
    else:
        mean, std = label_scaling(y, label_cols, path)
    unit = head_type(config.head).build(backbone.dim, sides, len(label_cols), config)
    if init_head is not None:
        unit.load_state_dict(warm.unit_.state_dict())
    elif not unit.joint:
        sample = np.random.default_rng(config.seed).permutation(len(y))[:2048]
        tables = {s: torch.from_numpy(backbone.encode(list(texts[s][sample]))) for s in sides}
        unit.prepare(tables, {s: torch.arange(len(sample)) for s in sides}, ((y - mean) / std)[sample])
    return unit, mean, std


class BelowFrozenBaselineWarning(UserWarning):
    """A fine-tuned pair model validates below what the frozen encoder's cosine gives with no training."""


def _frozen_cosine(backbone: Backbone, val_texts: dict, y_val: np.ndarray) -> float | None:
    """Spearman of the untrained encoder's cosine with the validation labels, for a pair task of one label
    (None otherwise): what fine-tuning must beat to be worth its time."""
    from scipy.stats import spearmanr

    if "pair" not in val_texts or y_val.shape[1] != 1 or len(y_val) < 3:
        return None
    a, b = backbone.encode(list(val_texts["text"])), backbone.encode(list(val_texts["pair"]))
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    value = spearmanr(cosine, y_val[:, 0])[0]
    return None if np.isnan(value) else float(value)


def finetune(
    data: pd.DataFrame,
    label_cols,
    columns: dict,
    out,
    config: TrainConfig | None = None,
    encoder: FinetuneConfig | None = None,
    *,
    val_data: pd.DataFrame | None = None,
    export_encoder=None,
    keep_checkpoints: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    paths=("data", "val data"),
    inputs=(),
    progress: bool = True,
    **settings,
) -> HeadModel | None:
    """Fine-tune an encoder (default: the embedded one) with a head; save to ``out``; return the saved model.

    ``columns`` maps side (text, pair, condition, template) -> column.  ``config``: how the head is
    trained (default ``FINETUNE_DEFAULTS``); ``encoder``: what fine-tuning adds (the encoder, its learning
    rate, LoRA, ``init_head``...); ``settings`` overrides fields of either by name
    (``finetune(df, "score", {"text": "s"}, "out", head="cross", epochs=2, encoder_lr=1e-5)``).
    An existing ``out`` (or ``export_encoder``) is refused unless ``overwrite`` (or ``resume``, which
    continues in ``out``); the old model stays whole until the new one replaces it.  ``inputs``: ``(flag, path)``
    pairs of files the caller read, which no output may be, contain or lie inside.  A non-zero rank of a
    multi-GPU run returns None: rank 0 saves.
    """
    try:
        import accelerate  # noqa: F401 -- the Trainer needs it; say so before any work
    except ImportError as e:
        raise MissingDependencyError(
            "heads finetune needs accelerate (and peft for --lora): pip install -e '.[finetune]'"
        ) from e
    from embedcache.toolkit import resolve_device

    columns = {s: c for s, c in columns.items() if c is not None}
    config, encoder = _configs(config, encoder, settings, sides_of(columns))
    label_cols = [label_cols] if isinstance(label_cols, str) else list(label_cols)
    inputs = [*inputs, ("--model", encoder.model), ("--init-head", encoder.init_head)]
    if resume:
        out = Path(out)
        check_not_input(out, inputs, "--out")
        if out.exists() and not (is_model_directory(out) or saved_checkpoints(out)):
            raise WriteError(
                f"--out {out} exists and holds neither a model nor checkpoints to resume from; it is "
                "never replaced: give the model directory of the run to resume"
            )
    else:
        out = check_output(out, inputs, overwrite, "--out", kind="model")
    if export_encoder is not None:
        check_output(export_encoder, [*inputs, ("--out", out)], overwrite, "--export-encoder", kind="encoder")
    start = time.perf_counter()
    texts, y, val_texts, y_val, val_table = _split(data, val_data, label_cols, columns, config, paths)
    device = resolve_device(device)
    with seeded(config.seed, device):
        backbone = Backbone.from_directory(encoder.model, encoder.max_length)
        frozen = _frozen_cosine(backbone, val_texts, y_val)  # the bar a fine-tuned pair head should clear
        joint = head_type(config.head).joint
        sides = ("text",) if joint else tuple(texts)
        unit, mean, std = _head(backbone, config, sides, texts, y, label_cols, encoder.init_head, paths[0])
        if encoder.lora:
            _add_lora(backbone, encoder.lora)
        if encoder.prompt_tuning:
            backbone.add_soft_prompt(encoder.prompt_tuning, config.seed)
        network = FineTuneNetwork(backbone, unit, sides, joint, config.loss)
        splits = {"train": (texts, (y - mean) / std), "val": (val_texts, (y_val - mean) / std)}
        trainer = run_trainer(
            network, backbone, config, encoder, splits, label_cols, mean, std, out, device, resume, progress
        )
    if not trainer.is_world_process_zero():
        return None
    if encoder.lora:
        with third_party_deprecations_off():  # plain weights: any sentence-transformers user can load them
            backbone.model = backbone.model.merge_and_unload()
    network.to("cpu").eval()
    result = _result(backbone, unit, sides, config, encoder, columns, label_cols, mean, std, trainer, out, start)
    result.validate(y_val, result.predict(val_table, squeeze=False))  # the way predict will
    reached = result.validation_.get("spearman")
    if frozen is not None and reached is not None and reached < frozen:
        warnings.warn(
            f"validation Spearman {reached:.3f} after fine-tuning is below the {frozen:.3f} the frozen "
            f"encoder's cosine gives on the same pairs: the {config.head} head did not learn in "
            f"{config.epochs} epoch(s) on {len(y)} rows; train longer (--epochs), raise --lr, or use the "
            "two-tower head (it starts from that cosine)",
            BelowFrozenBaselineWarning,
            stacklevel=2,
        )
    result.save(
        out,
        overwrite=True,
        move={
            "encoder": work_directory(out) / "encoder-new",
            **({"checkpoints": work_directory(out) / "checkpoints"} if keep_checkpoints else {}),
        },
    )
    shutil.rmtree(work_directory(out), ignore_errors=True)  # what training wrote beside the model
    if export_encoder is not None:
        with atomic_directory(export_encoder) as tmp:
            shutil.copytree(out / "encoder", tmp, dirs_exist_ok=True)
    return result


def _result(
    backbone, unit, sides, config, encoder, columns, label_cols, mean, std, trainer, out: Path, start
) -> HeadModel:
    """The HeadModel of a finished run, its encoder staged at ``out/.encoder-new`` for ``save`` to move in."""
    from embedcache import load_encoder

    history = [
        {k: v for k, v in e.items() if k in ("epoch", "loss", "eval_loss", "eval_rmse", "eval_spearman")}
        for e in trainer.state.log_history
        if "loss" in e or "eval_rmse" in e
    ]
    base = encoder.model or "all-MiniLM-L6-v2 (embedded)"
    finetuned = {
        "encoder": "encoder",
        "base": base,
        "lora": encoder.lora,
        "prompt_tuning": encoder.prompt_tuning,
        "init_head": encoder.to_dict()["init_head"],
        "encoder_lr": encoder.encoder_lr,
        "grad_accum": encoder.grad_accum,
        "max_length": backbone.max_length,
        "best_checkpoint_rmse": trainer.state.best_metric,
        "seconds": round(time.perf_counter() - start, 2),
    }
    staged = work_directory(out) / "encoder-new"  # moved into the new model directory when it replaces the old one
    shutil.rmtree(staged, ignore_errors=True)
    backbone.save(staged)
    saved = load_encoder(str(staged))  # its fingerprint is what a cache built with the exported encoder records
    return HeadModel.from_trained(
        config,
        config.head,
        unit,
        sides=sides,
        dim=backbone.dim,
        columns={**{s: columns.get(s) for s in ("text", "pair", "condition")}, "template": columns.get("template")},
        labels=label_cols,
        mean=mean,
        std=std,
        history=history,
        finetuned=finetuned,
        directory=out,
        encoder={"name": f"{base} fine-tuned", "fingerprint": saved.fingerprint, "load": None},
        own_encoder=backbone if unit.joint else saved,
    )


def _check_warm_start(warm: HeadModel, head: str, sides: tuple, dim: int, labels: list, path) -> None:
    if warm.head_ != head:
        raise ParameterError(
            f"init_head {path} is a {warm.head_!r} head; fine-tuning a {head!r} head needs a {head!r} one"
        )
    if tuple(warm.sides_) != tuple(sides) or warm.dim_ != dim:
        raise ParameterError(
            f"init_head {path} was trained on {list(warm.sides_)} of {warm.dim_} dims; "
            f"this fine-tuning has {list(sides)} of {dim} dims (another encoder or other columns?)"
        )
    if list(warm.labels_) != list(labels):
        raise ParameterError(f"init_head {path} predicts {warm.labels_}; this fine-tuning has labels {labels}")
