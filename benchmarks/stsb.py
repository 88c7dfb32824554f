"""The STS benchmark from ../shared/data/stsb-multi-mt, as the benchmarks read it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsb-multi-mt"


def read_sts(lang: str, split: str) -> pd.DataFrame:
    """Columns s1, s2 (texts) and score (0-5) of one language and split (train, dev)."""
    return pd.read_csv(
        DATA / f"stsb-{lang}-{split}.csv", header=None, names=["s1", "s2", "score"], dtype=str, keep_default_na=False
    ).assign(score=lambda d: d.score.astype(float))
