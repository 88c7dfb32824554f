"""Training a neural head on tensors held on the device: shuffled index batches, no per-item DataLoader.

AdamW with linear warmup and cosine decay, a masked loss (a missing label
counts for nothing), early stopping on validation RMSE with the best weights
restored, and a seeded generator so a fixed seed gives identical results.
"""

from __future__ import annotations

import copy
import math
import random
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from embedcache import ParameterError

LOSS_FUNCTIONS = {"mse": F.mse_loss, "huber": F.huber_loss, "l1": F.l1_loss}


@contextmanager
def seeded(seed: int, device="cpu"):
    """Torch's global generators seeded for the block and restored after it: a fixed seed gives the same
    model, and the caller's own random state is left as it was."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    python_state, numpy_state = random.getstate(), np.random.get_state()  # the Trainer seeds these too
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def auto_batch_size(n: int) -> int:
    """About 100 steps an epoch, between 32 and 1024 rows a step."""
    return int(min(1024, max(32, 2 ** round(math.log2(max(n, 1) / 100)))))


def to_device(tables: dict, index: dict, device) -> tuple[dict, dict]:
    # np.require copies read-only arrays (memory maps) only, which torch cannot wrap safely.
    return (
        {s: torch.as_tensor(np.require(t, np.float32, ["W"]), device=device) for s, t in tables.items()},
        {s: torch.as_tensor(i, dtype=torch.long, device=device) for s, i in index.items()},
    )


@torch.no_grad()
def predict_scaled(module, tables: dict, index: dict, batch_size: int = 8192) -> torch.Tensor:
    """Outputs in the standardised scale, for every row of ``index``."""
    module.eval()
    n = len(next(iter(index.values())))
    out = [module(tables, {s: i[k : k + batch_size] for s, i in index.items()}) for k in range(0, n, batch_size)]
    return torch.cat(out) if out else torch.zeros((0, 1))


def fit(
    module,
    tables,
    train_index,
    y_train,
    val_index=None,
    y_val=None,
    *,
    val_tables=None,
    scale,
    loss="mse",
    epochs=30,
    lr=1e-3,
    weight_decay=0.01,
    batch_size=None,
    warmup=0.05,
    patience=5,
    seed=0,
    device="cpu",
    sample_weight=None,
    progress=True,
) -> list[dict]:
    """Train ``module`` in place; return the history (one dict per epoch).

    ``y_*`` are standardised (n, n_labels) arrays with NaN for missing labels;
    ``scale`` (n_labels,) turns standardised errors back into label units for
    the validation RMSE.  With validation rows, training stops after
    ``patience`` epochs without a better RMSE and the best weights are restored.
    ``val_tables`` defaults to ``tables`` (a split of one dataset).
    ``sample_weight`` (n,) scales each training row's loss (a pseudo-label's confidence).
    Dropout draws from torch's global generator: run this under ``seeded`` for repeatable results.
    """
    if loss not in LOSS_FUNCTIONS:
        raise ParameterError(f"unknown loss {loss!r}; choose one of {', '.join(LOSS_FUNCTIONS)}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    module.to(device)
    tables, train_index = to_device(tables, train_index, device)
    y = torch.as_tensor(y_train, dtype=torch.float32, device=device)
    mask = ~torch.isnan(y)
    y = torch.nan_to_num(y)
    weight = None
    if sample_weight is not None:
        weight = torch.as_tensor(np.asarray(sample_weight, dtype=np.float32), device=device)[:, None].expand_as(y)
    has_val = val_index is not None and len(y_val)
    if has_val:
        val_tables, val_index = (
            to_device(val_tables, val_index, device)
            if val_tables is not None
            else (tables, to_device({}, val_index, device)[1])
        )
        yv = torch.as_tensor(y_val, dtype=torch.float32, device=device)
    scale_t = torch.as_tensor(scale, dtype=torch.float32, device=device)

    n = len(y)
    batch_size = batch_size or auto_batch_size(n)
    steps = epochs * math.ceil(n / batch_size)
    warm = max(1, int(warmup * steps))
    # fused: one kernel for all parameters instead of a Python loop over them
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))),
    )
    loss_fn = LOSS_FUNCTIONS[loss]

    history, best, best_state, bad_epochs = [], math.inf, None, 0
    bar = tqdm(range(epochs), disable=not progress, desc="training", unit="epoch")
    for epoch in bar:
        module.train()
        order = torch.randperm(n, generator=generator).to(device)
        total = 0.0
        for k in range(0, n, batch_size):
            rows = order[k : k + batch_size]
            pred = module(tables, {s: i[rows] for s, i in train_index.items()})
            m = mask[rows]
            if weight is None:
                batch_loss = loss_fn(pred[m], y[rows][m])
            else:  # a weighted mean of the per-element losses
                w = weight[rows][m]
                batch_loss = (loss_fn(pred[m], y[rows][m], reduction="none") * w).sum() / w.sum().clamp_min(1e-12)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            schedule.step()
            total += batch_loss.item() * len(rows)
        record = {"epoch": epoch + 1, "train_loss": total / n}
        if has_val:
            pred = predict_scaled(module, val_tables, val_index)
            vm = ~torch.isnan(yv)
            per_label = [
                torch.sqrt(((pred[:, j] - yv[:, j])[vm[:, j]] ** 2).mean()) * scale_t[j] for j in range(yv.shape[1])
            ]
            record["val_rmse"] = float(torch.stack(per_label).mean())
            if record["val_rmse"] < best:
                best, best_state, bad_epochs = record["val_rmse"], copy.deepcopy(module.state_dict()), 0
            else:
                bad_epochs += 1
        history.append(record)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
        if has_val and bad_epochs >= patience:
            break
    bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history
