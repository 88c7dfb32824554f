"""The default head for pairs (``--head auto``) against the plain cosine of the same vectors.

STS-B train -> dev, Spearman x 100, for 500, 2,000 and all 5,749 training
pairs (the first N of a fixed shuffle): cosine (no training; any monotone
calibration of it has the same Spearman), the auto head (two-tower for pairs)
and concat (the default for pairs before).  English on the embedded MiniLM,
German, Spanish and French on USE multilingual.  Accuracy only, no timings.

    python benchmarks/pair_default.py [--cache-root /tmp/pair-default]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from stsb import read_sts  # this folder is first on sys.path when a benchmark runs

from embedcache import EmbeddingCache, load_encoder
from heads import HeadModel

SIZES = (500, 2000, None)
LANGS = {"en": "minilm", "de": "use-multilingual", "es": "use-multilingual", "fr": "use-multilingual"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-root", default="/tmp/pair-default", help="where the benchmark's caches go")
    args = ap.parse_args()
    encoders = {}
    rows = []
    for lang, name in LANGS.items():
        encoder = encoders.setdefault(name, load_encoder(name))
        cache = EmbeddingCache(Path(args.cache_root) / name, encoder)
        train, dev = read_sts(lang, "train"), read_sts(lang, "dev")
        cache.add(list(train.s1) + list(train.s2) + list(dev.s1) + list(dev.s2), progress=True)
        u, v = cache.get(dev.s1.tolist()), cache.get(dev.s2.tolist())
        cosine = (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
        base = spearmanr(cosine, dev.score)[0] * 100
        order = np.random.default_rng(0).permutation(len(train))
        for size in SIZES:
            part = train.iloc[order[:size]]
            scores = {}
            for head in ("auto", "concat"):
                model = HeadModel(head=head).fit(
                    part, "score", cache=cache, text_col="s1", pair_col="s2", progress=False
                )
                scores[head] = model.evaluate(dev, cache=cache)[0]["spearman"] * 100
            rows.append((lang, name, size or len(train), base, scores["auto"], scores["concat"]))
            print(
                f"{lang} {size or len(train)}: cosine {base:.2f} auto {scores['auto']:.2f} concat {scores['concat']:.2f}",
                flush=True,
            )
    print("\n| lang | encoder | train pairs | cosine | auto (two-tower) | auto - cosine | concat | concat - cosine |")
    print("|---|---|---|---|---|---|---|---|")
    for lang, name, n, base, auto, concat in rows:
        print(
            f"| {lang} | {name} | {n} | {base:.2f} | {auto:.2f} | {auto - base:+.2f} | {concat:.2f} | {concat - base:+.2f} |"
        )


if __name__ == "__main__":
    main()
