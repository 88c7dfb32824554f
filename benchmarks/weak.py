"""Weak supervision on the STS benchmark: 5% of the training labels, then kNN propagation or self-training.

    python benchmarks/weak.py                      # MiniLM and USE, 3 draws of the 5%, about 10 minutes on 2 CPU cores
    python benchmarks/weak.py --encoders minilm --draws 1

STS-B English train -> dev from ../shared/data/stsb-multi-mt.  Of the 5,749
training pairs, 5% (287) keep their label; the rest are the unlabeled corpus.
Rows, by Spearman x 100 on the 1,500 dev pairs (mean over --draws random 5%):
  5% alone     the head trained on the labelled 5% only
  knn          heads pseudolabel --method knn, then the head trained on its output
  self-train   heads pseudolabel --method self-train: its committee on dev, and
               the head trained on its output (the two-command path)
  100%         the head trained on every training label
"recovered" is (row - 5%) / (100% - 5%).  Goal: knn or self-training recovers
at least half of the gap.  Vectors are cached under --work.

    python benchmarks/weak.py --lf                 # labeling functions only: seconds, no encoder

--lf: labeling functions on EmoBank valence (../shared/data/emobank, train ->
dev), five functions of the documented kind (``return 4.0 if ... else None``:
a few cue words each), combined from 300 labelled training sentences by the
learned weighted mean (mapped onto the labels' scale) and by a ridge on the
functions' votes and outputs: Pearson and Spearman with the dev labels on the
dev rows some function voted on, and how the pseudo-labels' mean and spread
compare with the labels'.  The better combination is heads pseudolabel's default.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from stsb import read_sts  # this folder is first on sys.path when a benchmark runs

from embedcache import EmbeddingCache, load_encoder
from heads import HeadModel
from heads.data import load_inputs
from heads.labels.pseudolabel import pseudolabel
from heads.labels.selftrain import committee_predict

COLUMNS = {"text": "s1", "pair": "s2"}


def spearman(model_or_pred, cache, dev) -> float:
    pred = (
        model_or_pred
        if isinstance(model_or_pred, np.ndarray)
        else model_or_pred.predict(dev, cache=cache, squeeze=False)
    )
    return 100 * spearmanr(pred[:, 0], dev.score)[0]


def run(alias: str, args) -> None:
    cache = EmbeddingCache(Path(args.work) / alias, load_encoder(alias))
    train, dev = read_sts("en", "train"), read_sts("en", "dev")
    cache.add(pd.concat([train.s1, train.s2, dev.s1, dev.s2]).tolist(), progress=True)

    def head(data):
        return HeadModel(head=args.head, label_range=(0, 5)).fit(
            data, "score", cache=cache, text_col="s1", pair_col="s2", progress=False
        )

    start = time.perf_counter()
    full = spearman(head(train), cache, dev)
    full_s = time.perf_counter() - start
    rows = {k: [] for k in ("5% alone", "knn -> head", "self-train committee", "self-train -> head")}
    seconds = {k: [] for k in rows}
    round_s = []
    for draw in range(args.draws):
        rng = np.random.default_rng(draw)
        labeled = train.iloc[rng.permutation(len(train))[: round(args.share * len(train))]]
        unlabeled = train.drop(columns="score")

        start = time.perf_counter()
        rows["5% alone"].append(spearman(head(labeled), cache, dev))
        seconds["5% alone"].append(time.perf_counter() - start)

        start = time.perf_counter()
        out, _ = pseudolabel(cache, unlabeled, COLUMNS, "knn", labeled, "score", k=args.k, progress=False)
        rows["knn -> head"].append(spearman(head(out), cache, dev))
        seconds["knn -> head"].append(time.perf_counter() - start)

        start = time.perf_counter()
        out, summary = pseudolabel(
            cache,
            unlabeled,
            COLUMNS,
            "self-train",
            labeled,
            "score",
            model=HeadModel(head=args.head, label_range=(0, 5), seed=draw),
            rounds=args.rounds,
            committee=args.committee,
            select=args.select,
            progress=False,
        )
        pred, _ = committee_predict(
            summary.pop("models"), load_inputs(cache, dev, COLUMNS, "dev"), np.std(labeled.score)
        )
        rows["self-train committee"].append(spearman(pred, cache, dev))
        seconds["self-train committee"].append(time.perf_counter() - start)
        round_s += [r["seconds"] for r in summary["rounds"]]
        print(
            f"  draw {draw}: rounds "
            + ", ".join(
                f"{r['round']}: {r['n_train']} rows {r['seconds']:.1f} s val spearman {r['spearman']:.3f}"
                for r in summary["rounds"]
            )
            + f"; kept round {summary['best_round']}",
            flush=True,
        )
        start = time.perf_counter()
        rows["self-train -> head"].append(spearman(head(out), cache, dev))
        seconds["self-train -> head"].append(seconds["self-train committee"][-1] + time.perf_counter() - start)

    base = np.mean(rows["5% alone"])
    print(
        f"\n### {alias}, {args.head} head, rounds judged by validation {args.select}, {args.share:.0%} of {len(train)} labels ({args.draws} draws)\n"
    )
    print("| method | dev Spearman x 100 (mean) | per draw | recovered of the gap | wall s (mean) |")
    print("|---|---:|---|---:|---:|")
    for name, values in rows.items():
        m = np.mean(values)
        recovered = "" if name == "5% alone" else f"{(m - base) / (full - base):.0%}"
        print(
            f"| {name} | {m:.2f} | {' / '.join(f'{v:.2f}' for v in values)} | {recovered} | {np.mean(seconds[name]):.1f} |"
        )
    print(f"| 100% | {full:.2f} | | 100% | {full_s:.1f} |")
    print(
        f"\nself-training: {np.mean(round_s):.1f} s per round on average ({args.committee} heads a round), "
        f"{len(round_s) / args.draws:.1f} rounds per run including round 0",
        flush=True,
    )


POSITIVE = (
    "love",
    "happy",
    "great",
    "wonderful",
    "best",
    "enjoy",
    "beautiful",
    "thank",
    "glad",
    "excellent",
    "good",
    "fun",
    "hope",
    "win",
    "success",
    "proud",
    "amazing",
    "nice",
    "friend",
    "celebrat",
    "smile",
    "excit",
    "fantastic",
    "perfect",
    "delight",
    "pleas",
    "joy",
    "congratulat",
    "award",
    "laugh",
)
NEGATIVE = (
    "hate",
    "sad",
    "terrible",
    "worst",
    "kill",
    "death",
    "died",
    "war",
    "pain",
    "angry",
    "fear",
    "bad",
    "attack",
    "crime",
    "poor",
    "problem",
    "fail",
    "lost",
    "wrong",
    "hurt",
    "victim",
    "murder",
    "sick",
    "crisis",
    "disaster",
    "afraid",
    "violen",
    "prison",
    "dead",
    "cancer",
)


def _cue(words, value):
    def fn(text):
        t = " " + text.lower()
        return value if any(f" {w}" in t for w in words) else None

    return fn


def lf_functions(word_count: bool = False):
    """Five functions of the documented kind (a constant when a cue is present, else no opinion); with
    ``word_count`` a sixth that votes everywhere with a value that says little (the number of words)."""
    cues = [
        _cue(POSITIVE[:15], 4.0),
        _cue(POSITIVE[15:], 3.8),
        _cue(NEGATIVE[:15], 2.0),
        _cue(NEGATIVE[15:], 2.2),
        lambda t: 3.5 if "!" in t else None,
    ]
    return cues + ([lambda t: min(len(t.split()), 40) / 10] if word_count else [])


def lf_table(args) -> None:
    from scipy.stats import pearsonr

    from heads.labels.pseudolabel import label_with_functions

    data = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "emobank"
    train, dev = (
        pd.read_csv(data / f"{split}.csv", keep_default_na=False).query("text != ''") for split in ("train", "dev")
    )
    print(f"\n### labeling functions: EmoBank valence, {args.lf_labels} labelled train sentences, {args.draws} draws\n")
    print(
        "| functions | combination | dev Pearson x 100 | dev Spearman x 100 | dev rows scored | pseudo mean / labels' "
        "mean | pseudo std / labels' std |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    wins = {"weighted": 0, "ridge": 0}
    for word_count in (False, True):
        results = {}
        for how in ("weighted", "ridge", "plain mean (no labels)"):
            rows = []
            for draw in range(args.draws):
                labeled = train.sample(args.lf_labels, random_state=draw)
                if how.startswith("plain"):
                    scores, _, _ = label_with_functions(dev.text.tolist(), lf_functions(word_count))
                else:
                    scores, _, _ = label_with_functions(
                        dev.text.tolist(),
                        lf_functions(word_count),
                        labeled.text.tolist(),
                        labeled.V.to_numpy(float),
                        how,
                    )
                ok = ~np.isnan(scores)
                truth = dev.V.to_numpy(float)[ok]
                rows.append(
                    (
                        100 * pearsonr(scores[ok], truth)[0],
                        100 * spearmanr(scores[ok], truth)[0],
                        ok.sum(),
                        scores[ok].mean() / truth.mean(),
                        scores[ok].std() / truth.std(),
                    )
                )
            m = np.mean(rows, axis=0)
            results[how] = m[0]
            which = "5 cue-word functions" + (" + word count" if word_count else "")
            print(f"| {which} | {how} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.0f} of {len(dev)} | {m[3]:.3f} | {m[4]:.3f} |")
        wins[max(("weighted", "ridge"), key=results.get)] += 1
    print(f"\nbetter with labels (sets won): {wins}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", nargs="+", default=["minilm", "use-multilingual"])
    ap.add_argument("--head", default="concat")
    ap.add_argument("--share", type=float, default=0.05, help="share of training labels kept (default 0.05)")
    ap.add_argument("--draws", type=int, default=3, help="random draws of the labelled share (default 3)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--committee", type=int, default=3)
    ap.add_argument(
        "--select", default="spearman", help="validation metric judging a round (default spearman, the measure here)"
    )
    ap.add_argument("--work", default="/tmp/embedcache-bench", help="where the STS caches live between runs")
    ap.add_argument("--lf", action="store_true", help="the labeling-function table only (EmoBank, no encoder)")
    ap.add_argument("--lf-labels", type=int, default=300, help="labelled sentences for --lf (default 300)")
    args = ap.parse_args()
    if args.lf:
        lf_table(args)
        return
    torch.set_num_threads(os.cpu_count())
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    for alias in args.encoders:
        run(alias, args)


if __name__ == "__main__":
    main()
