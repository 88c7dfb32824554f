#!/usr/bin/env bash
# Install the minimum versions setup.cfg declares into a fresh virtual environment and run a smoke
# test: import, a tiny cache, a head fit/predict (torch and ridge), the scikit-learn estimator and
# one epoch of fine-tuning a tiny BERT.  torch itself comes from the system: other torch builds
# are multi-GB CUDA downloads (see README); its declared minimum is checked by reading, not here.
# Usage: bash scripts/check_minimums.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m venv --system-site-packages "$work/venv"
pins=$(python - "$root/setup.cfg" <<'PY'
import configparser, re, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
reqs = cfg["options"]["install_requires"].split() + cfg["options.extras_require"]["finetune"].split()
# each 'name>=x' becomes 'name==x'; torch stays as installed.  transformers with its hub-kernels extra: the
# system's newer `kernels` (a dependency of newer transformers) is visible here and breaks transformers 5.0,
# which declares kernels<0.11; the extra installs the release it was made for.
pins = [re.sub(r">=", "==", r) for r in reqs if r.strip() and not r.startswith("torch")]
print(" ".join(re.sub(r"^transformers==", "transformers[hub-kernels]==", p) for p in pins))
PY
)
echo "installing: $pins"
"$work/venv/bin/pip" install -q $pins
"$work/venv/bin/pip" install -q --no-deps -e "$root"
cd "$work"
HF_HUB_OFFLINE=1 "$work/venv/bin/python" - "$root" <<'PY'
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(sys.argv[1]) / "tests"))
import numpy as np
import pandas as pd

import heads
from helpers import HashEncoder, make_tiny_bert
from embedcache import EmbeddingCache
from heads import EmbeddingRegressor, HeadModel
from heads.finetuning.finetune import finetune

print({d: metadata.version(d) for d in ("torch", "numpy", "scikit-learn", "transformers", "sentence-transformers", "pandas", "h5py")})
texts = [f"text {i}" for i in range(60)]
df = pd.DataFrame({"text": texts, "score": np.arange(60.0) % 7})
cache = EmbeddingCache("cache", HashEncoder())
cache.encode(texts)
for head in ("concat", "ridge"):
    pred = HeadModel(head=head, epochs=3).fit(df, "score", cache=cache, progress=False).predict(df, cache=cache)
    assert pred.shape == (60,) and np.isfinite(pred).all()
X = np.random.default_rng(0).standard_normal((50, 8))
assert EmbeddingRegressor(epochs=3).fit(X, X[:, 0]).predict(X).shape == (50,)
model = finetune(pd.DataFrame({"text": ["a b", "c d", "e f", "g h"] * 5, "score": [0.0, 1.0, 2.0, 3.0] * 5}), "score",
                 {"text": "text"}, "ft", head="concat", model=str(make_tiny_bert(Path("bert"))), epochs=1, progress=False)
assert np.isfinite(model.predict(pd.DataFrame({"text": ["a b"]}))).all()
print(f"minimum versions: ok (heads {heads.__version__})")
PY
