"""The network fine-tuning trains (encoder + head) and how rows become its batches."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..train import LOSS_FUNCTIONS
from .backbone import Backbone


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
