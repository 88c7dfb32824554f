"""Self-training: heads trained on a few labels score the unlabeled rows, the surest are kept, and training repeats.

Each round trains a committee of heads (the same settings, different seeds) on
the labelled rows plus the pseudo-labelled rows kept so far.  The committee's
mean is the pseudo-label and its agreement the confidence: where heads started
from different seeds disagree, the labelled rows did not settle the answer.
Round ``r`` of ``R`` keeps the most confident ``r / R`` of the unlabeled rows
(easy rows first, a curriculum), and the loop stops when the validation metric
(RMSE by default) stops improving; the best round's scores are returned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from embedcache import InputError
from embedcache.toolkit import check_choice, check_int

from ..data import Inputs
from ..metrics import NAMES, report
from ..model import HeadModel

SELECT = {"rmse": -1, "mae": -1, "pearson": 1, "spearman": 1, "r2": 1}  # +1: higher is better


@dataclass
class SelfTraining:
    scores: np.ndarray  # (n_unlabeled, n_labels) the best round's committee mean, in label units
    confidence: np.ndarray  # (n_unlabeled,) committee agreement in [0, 1]
    models: list  # the best round's committee (HeadModel)
    rounds: list  # per round: round, n_pseudo, n_train, seconds and the validation metrics
    best_round: int


def committee_predict(models: list, inputs: Inputs, label_std) -> tuple[np.ndarray, np.ndarray]:
    """Mean prediction of ``models`` and a confidence: 1 - their spread over the label's spread, clipped to [0, 1]."""
    preds = np.stack([m.predict_inputs(inputs) for m in models])
    spread = preds.std(axis=0) / np.maximum(np.asarray(label_std), 1e-12)
    return preds.mean(axis=0), 1 - np.clip(spread.mean(axis=1), 0, 1)


def self_train(
    model: HeadModel,
    labeled: Inputs,
    y: np.ndarray,
    unlabeled: Inputs,
    val: Inputs,
    y_val: np.ndarray,
    rounds: int = 3,
    committee: int = 3,
    select: str = "rmse",
    labels=None,
    progress: bool = True,
) -> SelfTraining:
    """Self-train ``model``'s settings from ``labeled`` rows over ``unlabeled`` rows, judged on ``val``.

    ``rounds`` is the most pseudo-labelling rounds after the labelled-only
    round 0; ``committee`` (>= 2) heads are trained per round.  ``select`` is
    the validation metric that judges a round: ``rmse`` or ``mae`` (lower is
    better), ``pearson``, ``spearman`` or ``r2`` (higher is better).  Where the
    ranking matters more than the scale, ``spearman`` suits better: a committee's
    mean is pulled towards the average label, so a student trained on it ranks
    better while its RMSE can grow.
    """
    check_choice(select, "select", list(SELECT))
    check_int(committee, "committee (its disagreement is the confidence)", minimum=2)
    check_int(rounds, "rounds")
    if not len(val):
        raise InputError("self-training needs labelled validation rows to judge each round")
    label_std = np.nanstd(y, axis=0)
    names = labels or [f"label_{j}" for j in range(y.shape[1])]
    history, best, pseudo, conf = [], None, None, None
    bar = tqdm(range(rounds + 1), disable=not progress, desc="self-training", unit="round")
    for r in bar:
        start = time.perf_counter()
        train, y_train, n_pseudo = labeled, y, 0
        if r:
            n_pseudo = round(len(unlabeled) * r / rounds)
            kept = np.argsort(-conf, kind="stable")[:n_pseudo]
            train, y_train = labeled.join(unlabeled.subset(kept)), np.concatenate([y, pseudo[kept]])
        models = [
            HeadModel(model.config.replace(seed=model.config.seed + i), device=model.device).fit_inputs(
                train, y_train, val, y_val, labels=labels, progress=False
            )
            for i in range(committee)
        ]
        val_pred, _ = committee_predict(models, val, label_std)
        metrics = {k: v for k, v in report(y_val, val_pred, names).items() if k in NAMES}
        pseudo, conf = committee_predict(models, unlabeled, label_std)
        history.append(
            {
                "round": r,
                "n_pseudo": n_pseudo,
                "n_train": len(train),
                **metrics,
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        bar.set_postfix(rmse=round(metrics["rmse"], 4), pseudo=n_pseudo)
        if best is None or SELECT[select] * metrics[select] > SELECT[select] * best.rounds[-1][select]:
            best = SelfTraining(pseudo, conf, models, list(history), r)
        else:
            break  # no better than the best round: more of the same pseudo-labels will not help
    bar.close()
    best.rounds = history
    return best
