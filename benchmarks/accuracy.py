"""More accuracy from the same cache (issue 24): layer vectors against the final sentence vector.

    python benchmarks/accuracy.py                   # about 10 minutes on 2 CPU cores
    python benchmarks/accuracy.py --sts-train 500   # a quicker look

(1) Precompute: EmoBank's 9,000 texts with the embedded MiniLM into a cache of sentence
vectors and into one with ``--layers all``, in the same run: texts/s and disk bytes per text.
Goal: with layers >= 0.9x the texts/s without.
(2) EmoBank (../shared/data/emobank, train -> dev; V, A, D and their mean; Pearson and
Spearman x 100): today's default head (concat) on the final vectors is the baseline;
ridge and concat on the final vectors and on the layer vectors, ensembles of 5, the
search's pick, and multilingual-e5-small alone and beside MiniLM (two caches).  Goal: the best
configuration >= baseline + 3 Pearson points on the mean of V/A/D.
(3) STS-B dev en/de/es/fr (pairs, ``--sts-train`` training pairs per language -> the
1,500 dev pairs) with multilingual-e5-small: today's two-tower head on the final vectors
against two-tower, concat and ridge on the layer vectors (Spearman x 100).  Goal: the best
configuration >= today's two-tower on every language.
Caches are kept under --work, so a rerun skips the encoding (but then times nothing).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr
from stsb import read_sts  # this folder is first on sys.path when a benchmark runs

from embedcache import EmbeddingCache, load_encoder
from heads import HeadModel

EMOBANK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emobank"
LABELS = ["V", "A", "D"]
STS_CONFIGS = [("two-tower", "final", 1), ("two-tower", "final", 5), ("two-tower", "layers", 1)]
STS_CONFIGS += [("concat", "layers", 1), ("ridge", "layers", 1)]


def emobank(split: str) -> pd.DataFrame:
    return pd.read_csv(EMOBANK / f"{split}.csv", keep_default_na=False).query("text != ''")


def precompute_speed(texts: list[str], work: Path) -> tuple[list[dict], dict[str, EmbeddingCache]]:
    """Encode ``texts`` into a cache without and one with layer vectors (fresh directories), timed."""
    best: dict[str, float] = {}
    caches = {}
    encoder = load_encoder("minilm")
    encoder.encode(texts[:64])  # warm up
    for _ in range(2):  # the best of two runs each, interleaved (this shared VM drifts)
        for name, layers in (("final", None), ("layers", "all")):
            path = work / f"emobank-{name}"
            shutil.rmtree(path, ignore_errors=True)
            began = time.perf_counter()
            cache = EmbeddingCache(path, encoder, layers=layers)
            cache.add(texts)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - began)
            caches[name] = cache
    rows = [
        {
            "cache": name,
            "texts": len(texts),
            "seconds": best[name],
            "texts/s": len(texts) / best[name],
            "bytes/text": caches[name].info()["bytes_per_text"],
        }
        for name in ("final", "layers")
    ]
    return rows, caches


def score(model: HeadModel, dev: pd.DataFrame, cache, labels, pair: str | None = None) -> dict:
    pred = model.predict(dev, cache=cache, squeeze=False)
    out = {}
    for j, label in enumerate(labels):
        out[label] = (100 * pearsonr(pred[:, j], dev[label])[0], 100 * spearmanr(pred[:, j], dev[label])[0])
    return out


def emobank_rows(cache: EmbeddingCache, e5: EmbeddingCache) -> list[dict]:
    train, dev = emobank("train"), emobank("dev")
    rows = []
    configs = [("concat", "final", 1), ("ridge", "final", 1), ("ridge", "layers", 1), ("concat", "layers", 1)]
    configs += [("concat", "final", 5), ("concat", "layers", 5), ("search", "final", 1)]
    configs += [("concat", "e5 alone", 1), ("concat", "MiniLM + e5", 1)]
    for head, features, ensemble in configs:
        caches = {"e5 alone": e5, "MiniLM + e5": [cache, e5]}.get(features, cache)
        began = time.perf_counter()
        model = HeadModel(
            head=head, features=features if features in ("final", "layers") else "final", ensemble=ensemble
        )
        model.fit(train, LABELS, cache=caches, progress=False)
        seconds = time.perf_counter() - began
        got = score(model, dev, caches, LABELS)
        if head == "search":
            head, features = f"search's pick: {model.head_}", model.config.features
        if ensemble > 1:
            metrics = model.evaluate(dev, cache=cache, interval=0.9)[0]
            interval, constant = metrics["interval"], metrics["interval_constant_width"]
        rows.append(
            {
                "head": head if ensemble == 1 else f"{head} x{ensemble}",
                "interval": (interval, constant) if ensemble > 1 else None,
                "features": features,
                "seconds": seconds,
                **got,
                "mean_pearson": np.mean([got[label][0] for label in LABELS]),
                "mean_spearman": np.mean([got[label][1] for label in LABELS]),
                "weights": model.layer_weights_,
            }
        )
    return rows


def sts_rows(n_train: int, work: Path) -> list[dict]:
    encoder = load_encoder("multilingual-e5-small")
    cache = EmbeddingCache(work / "stsb-e5-layers", encoder, layers="all")
    rows = []
    for lang in ("en", "de", "es", "fr"):
        train, dev = read_sts(lang, "train").head(n_train), read_sts(lang, "dev")
        cache.add(pd.concat([train.s1, train.s2, dev.s1, dev.s2]).tolist())
        for head, features, ensemble in STS_CONFIGS:
            began = time.perf_counter()
            model = HeadModel(head=head, features=features, ensemble=ensemble).fit(
                train, "score", cache=cache, text_col="s1", pair_col="s2", progress=False
            )
            seconds = time.perf_counter() - began
            pred = model.predict(dev, cache=cache)
            rows.append(
                {
                    "lang": lang,
                    "head": head,
                    "features": features,
                    "ensemble": ensemble,
                    "seconds": seconds,
                    "spearman": 100 * spearmanr(pred, dev.score)[0],
                }
            )
    return rows


def emobank_tables(work: Path) -> None:
    texts = list(dict.fromkeys(pd.concat([emobank("train"), emobank("dev")]).text))
    speed, caches = precompute_speed(texts, work)
    print("| cache (MiniLM, EmoBank texts) | texts | seconds | texts/s | vs final | bytes/text | goal |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in speed:
        ratio = r["texts/s"] / speed[0]["texts/s"]
        goal = ">= 0.9x" if r["cache"] == "layers" else "baseline"
        print(
            f"| {r['cache']} | {r['texts']} | {r['seconds']:.1f} | {r['texts/s']:.0f} | {ratio:.2f} | {r['bytes/text']} | {goal} |"
        )

    e5 = EmbeddingCache(work / "emobank-e5", load_encoder("multilingual-e5-small"))  # kept: encoded once
    e5.add(texts)
    rows = emobank_rows(caches["layers"], e5)
    base = rows[0]["mean_pearson"]
    print(
        "\n| EmoBank dev (MiniLM) | V r / rho | A r / rho | D r / rho | mean r | mean rho | vs baseline (r) | train s |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        cells = " | ".join(f"{r[label][0]:.1f} / {r[label][1]:.1f}" for label in LABELS)
        name = f"{r['head']} on {r['features']}" + (" (baseline)" if r is rows[0] else "")
        print(
            f"| {name} | {cells} | {r['mean_pearson']:.1f} | {r['mean_spearman']:.1f} | "
            f"{r['mean_pearson'] - base:+.1f} | {r['seconds']:.1f} |"
        )
    best = max(rows, key=lambda r: r["mean_pearson"])
    print(
        f"\nbest: {best['head']} on {best['features']}, {best['mean_pearson'] - base:+.1f} Pearson points on the "
        "mean of V/A/D (goal >= +3)"
    )
    mixed = [r for r in rows if r["weights"]]
    for r in mixed:
        print(f"learned layer weights ({r['head']}): {', '.join(f'{w:.2f}' for w in r['weights'])}")
    print(
        "\n| 0.9 intervals on EmoBank dev (mean of V/A/D) | coverage | mean width | constant-width coverage | width |"
    )
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        if r["interval"]:
            own, constant = r["interval"]
            print(
                f"| {r['head']} on {r['features']} | {own['coverage']:.3f} | {own['mean_width']:.3f} | "
                f"{constant['coverage']:.3f} | {constant['mean_width']:.3f} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/embedcache-accuracy"), help="where the caches go")
    ap.add_argument("--sts-train", type=int, default=2000, help="training pairs per STS-B language (default 2000)")
    ap.add_argument("--skip-sts", action="store_true", help="EmoBank only")
    ap.add_argument("--skip-emobank", action="store_true", help="STS-B only")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, no GPU used\n")

    if not args.skip_emobank:
        emobank_tables(args.work)
    if args.skip_sts:
        return
    sts = sts_rows(args.sts_train, args.work)
    print(f"\n| STS-B dev Spearman x 100 (e5-small, {args.sts_train} train pairs) | en | de | es | fr |")
    print("|---|---:|---:|---:|---:|")
    for head, features, ensemble in STS_CONFIGS:
        cells = " | ".join(
            f"{next(r['spearman'] for r in sts if (r['lang'], r['head'], r['features'], r['ensemble']) == (lang, head, features, ensemble)):.1f}"
            for lang in ("en", "de", "es", "fr")
        )
        name = f"{head}{f' x{ensemble}' if ensemble > 1 else ''} on {features}"
        print(f"| {name}{' (today)' if (features, ensemble) == ('final', 1) else ''} | {cells} |")


if __name__ == "__main__":
    main()
