"""The transformers Trainer as fine-tuning runs it: optimizer groups, precision, length grouping, checkpoints, logs."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..config import FinetuneConfig, TrainConfig
from ..metrics import NAMES, report
from .network import Collator, Rows


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


@contextmanager
def third_party_deprecations_off():
    """No deprecation notices from peft and transformers within the block: they speak to those libraries'
    callers (us), and a user of heads finetune can do nothing about them."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(peft|transformers)(\.|$)")
        yield


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


def run_trainer(network, backbone, config, encoder, splits: dict, label_cols, mean, std, out, device, resume, progress):
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
    checkpoints = saved_checkpoints(out) if resume else []
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    return trainer


def work_directory(out: Path) -> Path:
    """Where a fine-tuning run into ``out`` keeps its checkpoints and the encoder it stages: beside ``out``, never
    inside it, so a run killed mid-training leaves the old model directory as it was."""
    return out.parent / f".{out.name}.finetune"


def saved_checkpoints(out: Path) -> list[Path]:
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
