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
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from embedcache import MissingDependencyError, ParameterError, WriteError
from embedcache.toolkit import atomic_directory, check_not_input, check_output, is_model_directory

from ..config import FINETUNE_DEFAULTS, FinetuneConfig, TrainConfig, finetune_defaults
from ..data import grouped_split, load_labels, side_texts, sides_of
from ..head_types import TorchHead, head_type, resolve_head
from ..metrics import NAMES, report
from ..model import HeadModel
from ..train import LOSS_FUNCTIONS, seeded
from ..training_rows import check_label_values, label_scaling
from .backbone import Backbone

# what heads finetune trains when not told otherwise: a few epochs suffice for a pretrained encoder


class FineTuneNetwork(nn.Module):
    """Encoder + head: ``forward(labels=None, **batch) -> {"loss", "logits"}``, as the Trainer expects."""

    def __init__(self, backbone: Backbone, head: nn.Module, sides: tuple, cross: bool, loss: str = "mse"):
        super().__init__()
        self.backbone, self.head, self.sides, self.cross, self.loss = backbone, head, sides, cross, loss

    def forward(self, labels=None, **batch):
        if self.cross:
            joint = self.backbone(batch["joint"])
            tables, index = {"text": joint}, {"text": torch.arange(len(joint), device=joint.device)}
        else:  # each distinct text of the batch is encoded once; rows index into them
            tables = {s: self.backbone(batch[s]) for s in self.sides}
            index = {s: batch[f"{s}_index"] for s in self.sides}
        pred = self.head(tables, index).float()
        out = {"logits": pred}
        if labels is not None:
            keep = ~torch.isnan(labels)
            out["loss"] = LOSS_FUNCTIONS[self.loss](pred[keep], labels[keep])
        return out

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        model = self.backbone.model
        if hasattr(model, "enable_input_require_grads"):  # LoRA: the frozen embeddings give no grad otherwise
            model.enable_input_require_grads()
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs or {"use_reentrant": False}
        )


class Collator:
    """Rows -> a batch: texts tokenized and padded to the batch's longest, labels as a float tensor.

    ``splits`` maps a split name to its (texts per side, standardised labels);
    each row says which split it comes from.
    """

    def __init__(self, backbone: Backbone, splits: dict, sides: tuple, cross: bool):
        self.backbone, self.splits, self.sides, self.cross = backbone, splits, sides, cross

    def __call__(self, items) -> dict:
        texts, y = self.splits[items[0]["split"]]
        rows = np.array([item["row"] for item in items])
        batch = {"labels": torch.as_tensor(y[rows], dtype=torch.float32)}
        if self.cross:
            second = next((texts[s] for s in ("pair", "condition") if s in texts), None)
            batch["joint"] = self.backbone.tokenize(
                list(texts["text"][rows]), None if second is None else list(second[rows])
            )
        else:
            for side in self.sides:
                distinct, inverse = np.unique(texts[side][rows], return_inverse=True)
                batch[side] = self.backbone.tokenize(list(distinct))
                batch[f"{side}_index"] = torch.as_tensor(inverse.ravel(), dtype=torch.long)
        return batch


class Rows(torch.utils.data.Dataset):
    """Row numbers of one split; the collator holds the texts."""

    def __init__(self, n: int, split: str):
        self.n, self.split = n, split

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"row": i, "split": self.split}


def _trainer_class():
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class FineTuneTrainer(Trainer):
        """Two learning rates (encoder, head) and length-grouped batches from precomputed lengths."""

        def __init__(self, *args, encoder_lr: float, lengths: list, **kwargs):
            self.encoder_lr, self.lengths = encoder_lr, lengths
            super().__init__(*args, **kwargs)

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                net = self.model
                # A soft prompt learns at the head's rate: a few vectors need far larger steps than weights.
                soft = [net.backbone.soft_prompt] if net.backbone.soft_prompt is not None else []
                groups = [
                    {"params": [p for p in net.backbone.model.parameters() if p.requires_grad], "lr": self.encoder_lr},
                    {
                        "params": [p for p in net.head.parameters() if p.requires_grad] + soft,
                        "lr": self.args.learning_rate,
                    },
                ]
                self.optimizer = torch.optim.AdamW(groups, weight_decay=self.args.weight_decay)
            return self.optimizer

        def _get_train_sampler(self, train_dataset=None):
            if getattr(self.args, "train_sampling_strategy", None) == "group_by_length" or getattr(
                self.args, "group_by_length", False
            ):
                return LengthGroupedSampler(
                    self.args.train_batch_size * self.args.gradient_accumulation_steps,
                    lengths=self.lengths,
                    generator=torch.Generator().manual_seed(self.args.seed),
                )
            return super()._get_train_sampler(train_dataset)

        def _get_eval_sampler(self, eval_dataset):
            return torch.utils.data.SequentialSampler(eval_dataset)

    return FineTuneTrainer


def _precision(precision: str, device: str) -> dict:
    """The TrainingArguments flag for embedcache's choice of precision (auto: bf16 or fp16 on a GPU, fp32 elsewhere)."""
    from embedcache.toolkit import resolve_precision

    chosen = resolve_precision(precision, device)
    return {} if chosen == "fp32" else {chosen: True}


def _group_by_length() -> dict:
    """Batches of similar lengths: ``train_sampling_strategy`` in newer transformers, ``group_by_length`` before."""
    import inspect

    from transformers import TrainingArguments

    new = "train_sampling_strategy" in inspect.signature(TrainingArguments.__init__).parameters
    return {"train_sampling_strategy": "group_by_length"} if new else {"group_by_length": True}


def _checkpointing(enabled: bool) -> dict:
    """The TrainingArguments flag, under its transformers 5 name where it has one."""
    if not enabled:
        return {}
    import inspect

    from transformers import TrainingArguments

    new = "activation_checkpointing" in inspect.signature(TrainingArguments.__init__).parameters
    return {"activation_checkpointing" if new else "gradient_checkpointing": True}


def _texts(df: pd.DataFrame, columns: dict, path) -> dict[str, np.ndarray]:
    return {side: np.asarray(t, dtype=object) for side, t in side_texts(df, columns, path).items()}


@contextmanager
def _third_party_deprecations_off():
    """No deprecation notices from peft and transformers within the block: they speak to those libraries'
    callers (us), and a user of heads finetune can do nothing about them."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(peft|transformers)(\.|$)")
        yield


def _add_lora(backbone: Backbone, r: int) -> None:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise MissingDependencyError(
            "lora (--lora) needs peft: pip install peft (or pip install -e '.[finetune]')"
        ) from e
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.1, target_modules="all-linear")
    with _third_party_deprecations_off():
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


def _training_arguments(
    out: Path, config: TrainConfig, encoder: FinetuneConfig, n_rows: int, device: str, progress: bool
):
    from transformers import TrainingArguments

    steps = config.epochs * -(-n_rows // (config.batch_size * encoder.grad_accum))
    return TrainingArguments(
        output_dir=str(work_directory(out) / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=2 * config.batch_size,
        gradient_accumulation_steps=encoder.grad_accum,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 10),
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="rmse",
        greater_is_better=False,
        **_group_by_length(),
        remove_unused_columns=False,
        label_names=["labels"],
        report_to="none",
        disable_tqdm=not progress,
        seed=config.seed,
        use_cpu=device == "cpu",
        **_precision(encoder.precision, device),
        **_checkpointing(encoder.gradient_checkpointing),
    )


def _train(network, backbone, config, encoder, splits: dict, label_cols, mean, std, out, device, resume, progress):
    """Run the Trainer; returns it (its state holds the history and the best checkpoint's metric)."""
    from transformers import EarlyStoppingCallback

    def metrics(prediction):
        pred = np.asarray(prediction.predictions, dtype=float) * std + mean
        if config.label_range is not None:
            pred = np.clip(pred, *config.label_range)
        overall = report(np.asarray(prediction.label_ids, dtype=float) * std + mean, pred, label_cols)
        return {k: overall[k] for k in NAMES if k != "n"}

    texts, y_s = splits["train"]
    lengths = [sum(len(texts[s][i]) for s in texts) for i in range(len(y_s))]  # characters: close enough to sort by
    trainer = _trainer_class()(
        model=network,
        args=_training_arguments(out, config, encoder, len(y_s), device, progress),
        train_dataset=Rows(len(y_s), "train"),
        eval_dataset=Rows(len(splits["val"][1]), "val"),
        data_collator=Collator(backbone, splits, network.sides, network.cross),
        compute_metrics=metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=config.patience)],
        encoder_lr=encoder.encoder_lr,
        lengths=lengths,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if not progress:  # without progress bars the Trainer prints every log line instead
        trainer.remove_callback(PrinterCallback)
    else:  # its log lines as plain numbers, not a dict of quoted strings
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_plain_progress())
    checkpoints = _checkpoints(out) if resume else []
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    return trainer


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


def work_directory(out: Path) -> Path:
    """Where a fine-tuning run into ``out`` keeps its checkpoints and the encoder it stages: beside ``out``, never
    inside it, so a run killed mid-training leaves the old model directory as it was."""
    return out.parent / f".{out.name}.finetune"


def _checkpoints(out: Path) -> list[Path]:
    """Checkpoints to resume from, oldest first: the run's own, else those a finished run kept in ``out``."""
    for where in (work_directory(out) / "checkpoints", out / "checkpoints"):
        found = sorted(where.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[-1]))
        if found:
            return found
    return []


def _plain_progress():
    """transformers' progress bar, whose log lines read ``epoch 1: loss 0.2959, eval_rmse 0.4123`` instead of a
    dict of quoted strings."""
    from transformers.trainer_callback import ProgressCallback

    class PlainProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                shown = {k: v for k, v in logs.items() if k != "total_flos" and isinstance(v, (int, float))}
                epoch = shown.pop("epoch", None)
                text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
                self.training_bar.write((f"epoch {epoch:.2f}: " if epoch is not None else "") + text)

    return PlainProgress()


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
        if out.exists() and not (is_model_directory(out) or _checkpoints(out)):
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
        trainer = _train(
            network, backbone, config, encoder, splits, label_cols, mean, std, out, device, resume, progress
        )
    if not trainer.is_world_process_zero():
        return None
    if encoder.lora:
        with _third_party_deprecations_off():  # plain weights: any sentence-transformers user can load them
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
