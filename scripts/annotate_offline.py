"""Rate a sample of a corpus with an annotation function, resumably, and write a labelled file.

    python scripts/annotate_offline.py prompts.csv --text-col prompt --sample 200 \
        --record ratings.jsonl --out rated.csv

The function here, ``local_judge``, runs offline: it stands in for a call to a
large model (the built-in prompt-quality labeling functions, with a little
latency and an occasional transient failure so the retries show).  To use a
real model, replace it with something like the commented ``llm_judge`` below;
credentials come from the environment, never from code or the record.

Every answer is fsynced to ``--record`` as it arrives: kill this script and run
it again and only the texts without an answer are sent.  The output
(text column + ``score``) feeds ``heads pseudolabel --labeled`` or ``heads train``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script from anywhere in a checkout

import pandas as pd

from embedcache import read_table
from heads.data import column_texts
from heads.labels.annotate import annotate
from heads.labels.labeling import apply, combine


def local_judge(text: str) -> float:
    """An offline stand-in for a large model's 0-1 rating of a prompt."""
    time.sleep(0.005)  # a remote call takes time; the thread pool overlaps them
    if random.random() < 0.05:
        raise ConnectionError("simulated transient failure (retried)")
    outputs, _ = apply([text])
    return round(float(combine(outputs)[0]), 3)


# def llm_judge(text: str) -> float:
#     import os, openai
#     client = openai.OpenAI(api_key=os.environ["OPENAI_API_KEY"])
#     reply = client.chat.completions.create(model="gpt-4o-mini", messages=[
#         {"role": "user", "content": f"Rate this prompt's quality from 0 to 1. Reply with a number only.\n\n{text}"}])
#     return float(reply.choices[0].message.content)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="the corpus (CSV, TSV, JSON, JSONL, Parquet)")
    ap.add_argument("--text-col", default="text")
    ap.add_argument("--sample", type=int, default=200, help="how many distinct texts to rate (default 200)")
    ap.add_argument("--seed", type=int, default=0, help="which sample (the same seed picks the same texts)")
    ap.add_argument("--record", required=True, help="JSONL record of every answer; reused on a rerun")
    ap.add_argument("--out", required=True, help="labelled CSV: the text column and score")
    ap.add_argument("--max-workers", type=int, default=8, help="calls in flight at once (default 8)")
    args = ap.parse_args(argv)

    texts = list(dict.fromkeys(column_texts(read_table(args.data), args.text_col, args.data)))
    sample = random.Random(args.seed).sample(texts, min(args.sample, len(texts)))
    scores = annotate(sample, local_judge, args.record, max_workers=args.max_workers, retries=3, backoff=0.01)
    pd.DataFrame({args.text_col: sample, "score": [scores[t] for t in sample]}).to_csv(args.out, index=False)
    print(f"rated {len(sample)} texts (answers in {args.record}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
