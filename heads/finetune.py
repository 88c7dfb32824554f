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
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from embedcache import (
    InputError,
    MissingDependencyError,
    ParameterError,
    atomic_directory,
    check_choice,
    check_float,
    check_int,
    check_output,
)

from .backbone import Backbone
from .data import grouped_split, load_labels, side_texts
from .metrics import NAMES, report
from .model import HeadModel, check_label_values, check_params
from .modules import MODULES
from .train import LOSSES

FINETUNE_HEADS = ("concat", "two-tower", "cross")


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
            out["loss"] = LOSSES[self.loss](pred[keep], labels[keep])
        return out

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        model = self.backbone.model
        if hasattr(model, "enable_input_require_grads"):  # LoRA: the frozen embeddings give no grad otherwise
            model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs or {"use_reentrant": False})


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
            batch["joint"] = self.backbone.tokenize(list(texts["text"][rows]), None if second is None else list(second[rows]))
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
                groups = [{"params": [p for p in net.backbone.parameters() if p.requires_grad], "lr": self.encoder_lr},
                          {"params": [p for p in net.head.parameters() if p.requires_grad], "lr": self.args.learning_rate}]
                self.optimizer = torch.optim.AdamW(groups, weight_decay=self.args.weight_decay)
            return self.optimizer

        def _get_train_sampler(self, train_dataset=None):
            if getattr(self.args, "train_sampling_strategy", None) == "group_by_length" or getattr(self.args, "group_by_length", False):
                return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                            lengths=self.lengths, generator=torch.Generator().manual_seed(self.args.seed))
            return super()._get_train_sampler(train_dataset)

        def _get_eval_sampler(self, eval_dataset):
            return torch.utils.data.SequentialSampler(eval_dataset)

    return FineTuneTrainer


def _precision(precision: str, device: str) -> dict:
    """The TrainingArguments flag for embedcache's choice of precision (auto: bf16 or fp16 on a GPU, fp32 elsewhere)."""
    from embedcache.encoders import resolve_precision

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


def _add_lora(backbone: Backbone, r: int) -> None:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise MissingDependencyError("--lora needs peft: pip install peft (or pip install -e '.[finetune]')") from e
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.1, target_modules="all-linear")
    backbone.model = get_peft_model(backbone.model, config)


def finetune(data: pd.DataFrame, label_cols, columns: dict, out, head: str = "concat", model: str | None = None,
             val_data: pd.DataFrame | None = None, init_head=None, lora: int | None = None, epochs: int = 3,
             lr: float = 1e-3, encoder_lr: float = 2e-5, weight_decay: float = 0.01, batch_size: int = 32,
             grad_accum: int = 1, gradient_checkpointing: bool = False, max_length: int | None = None,
             patience: int = 2, val_fraction: float = 0.1, label_range=None, loss: str = "mse", width: int = 256,
             dropout: float = 0.1, precision: str = "auto", device: str | None = None, seed: int = 0,
             export_encoder=None, keep_checkpoints: bool = False, resume: bool = False, paths=("data", "val data"),
             overwrite: bool = False, progress: bool = True) -> HeadModel:
    """Fine-tune ``model`` (default: the embedded encoder) with ``head``; save to ``out``; return the saved model.

    ``columns`` maps side (text, pair, condition) -> column.  ``init_head`` is
    a frozen head's directory to start from (linear probing, then fine-tuning).  An existing ``out``
    (or ``export_encoder``) is refused unless ``overwrite`` (or ``resume``, which continues in ``out``);
    the old model stays whole until the new one replaces it.
    """
    try:
        import accelerate  # noqa: F401 -- the Trainer needs it; say so before any work
    except ImportError as e:
        raise MissingDependencyError("heads finetune needs accelerate (and peft for --lora): pip install -e '.[finetune]'") from e
    from transformers import EarlyStoppingCallback, TrainingArguments

    from embedcache import load_encoder
    from embedcache.encoders import resolve_device

    check_choice(head, "head", FINETUNE_HEADS)
    check_params({"head": head, "width": width, "dropout": dropout, "shared": True, "loss": loss, "epochs": epochs,
                  "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size, "patience": patience,
                  "val_fraction": val_fraction, "label_range": label_range, "seed": seed}, zero_lr=True)
    check_float(encoder_lr, "encoder_lr", 0)  # 0 freezes the encoder: the head alone learns
    check_int(grad_accum, "grad_accum")
    for value, name in ((lora, "lora"), (max_length, "max_length")):
        if value is not None:
            check_int(value, name)
    label_cols = [label_cols] if isinstance(label_cols, str) else list(label_cols)
    columns = {s: c for s, c in columns.items() if c is not None}
    template = columns.get("template")
    sides_given = {"text" if s == "template" else s for s in columns}
    if head == "two-tower" and len(sides_given) != 2:
        raise ParameterError("the two-tower head needs exactly one of a pair column or a condition column")
    if head == "cross" and len(sides_given) > 2:
        raise ParameterError("the cross head reads two texts in one sequence: give a pair column or a condition column, not both")
    out = Path(out) if resume else check_output(out, overwrite=overwrite, flag="--out")
    if export_encoder is not None:
        check_output(export_encoder, overwrite=overwrite, flag="--export-encoder")
    start = time.perf_counter()

    y, texts = load_labels(data, label_cols, paths[0]), _texts(data, columns, paths[0])
    check_label_values(y, label_range, label_cols, paths[0])
    if val_data is not None:
        y_val, val_texts = load_labels(val_data, label_cols, paths[1]), _texts(val_data, columns, paths[1])
        check_label_values(y_val, label_range, label_cols, paths[1])
        val_rows_table = val_data
    else:
        groups = np.unique(texts["text"], return_inverse=True)[1].ravel()
        train_rows, val_rows = grouped_split(groups, val_fraction, seed)
        val_rows_table = data.iloc[val_rows]
        val_texts, y_val = {s: t[val_rows] for s, t in texts.items()}, y[val_rows]
        texts, y = {s: t[train_rows] for s, t in texts.items()}, y[train_rows]

    torch.manual_seed(seed)
    backbone = Backbone.from_directory(model, max_length)
    cross = head == "cross"
    sides = ("text",) if cross else tuple(texts)
    warm = HeadModel.load(init_head) if init_head is not None else None
    if warm is not None:
        _check_warm_start(warm, head, sides, backbone.dim, label_cols, init_head)
        mean, std = warm.mean_, warm.std_
    else:
        mean, std = np.nanmean(y, axis=0), np.nanstd(y, axis=0)
        constant = [c for c, s in zip(label_cols, std) if not s > 0]
        if constant:
            raise InputError(f"{paths[0]}: label {', '.join(map(repr, constant))} is constant in the training rows; nothing to learn")
    module = MODULES[head](backbone.dim, sides, width=width, dropout=dropout, n_outputs=len(label_cols), shared=True)
    y_s, y_val_s = (y - mean) / std, (y_val - mean) / std
    if warm is not None:
        module.load_state_dict(warm.module_.state_dict())
    elif head == "two-tower":  # as in heads train: start from the cosine of the (initial) vectors, calibrated
        sample = np.random.default_rng(seed).permutation(len(y))[:2048]
        tables = {s: torch.from_numpy(backbone.encode(list(texts[s][sample]))) for s in sides}
        module.start_from_cosine(tables, {s: torch.arange(len(sample)) for s in sides}, y_s[sample])
    if lora:
        _add_lora(backbone, lora)
    network = FineTuneNetwork(backbone, module, sides, cross, loss)

    device = resolve_device(device)
    steps = epochs * -(-len(y) // (batch_size * grad_accum))
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=batch_size, per_device_eval_batch_size=2 * batch_size,
        gradient_accumulation_steps=grad_accum, num_train_epochs=epochs, learning_rate=lr, weight_decay=weight_decay,
        lr_scheduler_type="cosine", warmup_steps=max(1, steps // 10), eval_strategy="epoch", save_strategy="epoch",
        logging_strategy="epoch", save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="rmse",
        greater_is_better=False, **_group_by_length(),
        remove_unused_columns=False, label_names=["labels"], report_to="none", disable_tqdm=not progress, seed=seed,
        use_cpu=device == "cpu", **_precision(precision, device), **_checkpointing(gradient_checkpointing))

    def metrics(prediction):
        pred = np.asarray(prediction.predictions, dtype=float) * std + mean
        if label_range is not None:
            pred = np.clip(pred, *label_range)
        overall = report(np.asarray(prediction.label_ids, dtype=float) * std + mean, pred, label_cols)
        return {k: overall[k] for k in NAMES if k != "n"}

    lengths = [sum(len(texts[s][i]) for s in texts) for i in range(len(y))]  # characters: close enough to sort by
    trainer = _trainer_class()(
        model=network, args=args, train_dataset=Rows(len(y), "train"), eval_dataset=Rows(len(y_val), "val"),
        data_collator=Collator(backbone, {"train": (texts, y_s), "val": (val_texts, y_val_s)}, sides, cross),
        compute_metrics=metrics, callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)],
        encoder_lr=encoder_lr, lengths=lengths)
    if not progress:  # without progress bars the Trainer prints every log line instead
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*")) if resume else []
    trainer.train(resume_from_checkpoint=bool(checkpoints) or None)
    if not trainer.is_world_process_zero():
        return None

    history = [{k: v for k, v in e.items() if k in ("epoch", "loss", "eval_loss", "eval_rmse", "eval_spearman")}
               for e in trainer.state.log_history if "loss" in e or "eval_rmse" in e]
    if lora:
        backbone.model = backbone.model.merge_and_unload()  # plain weights: any sentence-transformers user can load them
    network.to("cpu").eval()
    result = HeadModel(head=head, width=width, dropout=dropout, loss=loss, epochs=epochs, lr=lr, weight_decay=weight_decay,
                       batch_size=batch_size, patience=patience, val_fraction=val_fraction, label_range=label_range, seed=seed)
    result.head_ = head
    result.columns_ = {**{s: columns.get(s) for s in ("text", "pair", "condition")}, "template": template}
    result.labels_, result.mean_, result.std_ = label_cols, np.asarray(mean), np.asarray(std)
    result.sides_, result.dim_, result.module_ = sides, backbone.dim, module
    result.finetuned_ = {"encoder": "encoder", "base": model or "all-MiniLM-L6-v2 (embedded)", "lora": lora,
                         "init_head": None if init_head is None else str(init_head), "encoder_lr": encoder_lr,
                         "grad_accum": grad_accum, "max_length": backbone.max_length,
                         "best_checkpoint_rmse": trainer.state.best_metric, "seconds": round(time.perf_counter() - start, 2)}
    staged = out / ".encoder-new"  # moved into the new model directory when it replaces the old one
    shutil.rmtree(staged, ignore_errors=True)
    backbone.save(staged)
    saved = load_encoder(str(staged))  # its fingerprint is what a cache built with the exported encoder records
    result.directory_, result._own_encoder = out, backbone if cross else saved
    result.encoder_ = {"name": f"{result.finetuned_['base']} fine-tuned", "fingerprint": saved.fingerprint, "load": None}
    result.history_ = history
    result.validation_ = report(y_val, result.predict(None, val_rows_table), label_cols)  # the way predict will
    result.save(out, overwrite=True, move={"encoder": staged,
                                           **({"checkpoints": out / "checkpoints"} if keep_checkpoints else {})})
    if export_encoder is not None:
        with atomic_directory(export_encoder) as tmp:
            shutil.copytree(out / "encoder", tmp, dirs_exist_ok=True)
    return result


def _check_warm_start(warm: HeadModel, head: str, sides: tuple, dim: int, labels: list, path) -> None:
    if warm.head_ != head:
        raise ParameterError(f"--init-head {path} is a {warm.head_!r} head; fine-tuning a {head!r} head needs a {head!r} one")
    if head == "cross" or warm.head_ == "ridge":
        raise ParameterError(f"--init-head {path}: a {warm.head_!r} head cannot start a {head!r} fine-tuning; use concat or two-tower")
    if tuple(warm.sides_) != tuple(sides) or warm.dim_ != dim:
        raise ParameterError(f"--init-head {path} was trained on {list(warm.sides_)} of {warm.dim_} dims; "
                         f"this fine-tuning has {list(sides)} of {dim} dims (another encoder or other columns?)")
    if list(warm.labels_) != list(labels):
        raise ParameterError(f"--init-head {path} predicts {warm.labels_}; this fine-tuning has labels {labels}")
