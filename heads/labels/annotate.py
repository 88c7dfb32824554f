"""Running a user's annotation function (for example one that asks a large model) over texts, resumably.

Every answer is appended to a JSONL record (``{"key", "text", "score"}``) and
fsynced as soon as it arrives, so a crash or a rerun never pays twice for the
same text.  Calls run on a thread pool of ``max_workers`` (the concurrency
limit) and are retried with exponential backoff.  Credentials belong in the
function's own environment, never in this record.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from embedcache.toolkit import text_keys


class AnnotationError(RuntimeError):
    """Some texts still failed after every retry; all other answers are in the record."""


def read_record(path) -> dict[str, float]:
    """Key (hex) -> score of every whole line; a last line cut by a crash is ignored."""
    path = Path(path)
    answers = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line a killed process was writing
            answers[entry["key"]] = entry["score"]
    return answers


def annotate(
    texts, fn, record, max_workers: int = 4, retries: int = 3, backoff: float = 1.0, progress: bool = True
) -> dict[str, float]:
    """Scores of ``texts`` from ``fn(text) -> float``, taken from ``record`` where already paid for.

    Raises AnnotationError naming how many texts failed after ``retries`` retries.
    """
    texts = list(dict.fromkeys(texts))
    keys = [k.hex() for k in map(bytes, text_keys(texts))]
    answers = read_record(record)
    todo = [(t, k) for t, k in zip(texts, keys) if k not in answers]
    lock, failures = threading.Lock(), []

    def call(text):
        for attempt in range(retries + 1):
            try:
                return float(fn(text))
            except Exception:
                if attempt == retries:
                    raise
                time.sleep(backoff * 2**attempt)

    Path(record).parent.mkdir(parents=True, exist_ok=True)
    with open(record, "a+b") as f:  # end a line cut by a crash, or the next answer would join it
        size = f.seek(0, os.SEEK_END)
        if size and f.seek(size - 1) is not None and f.read(1) != b"\n":
            f.write(b"\n")
    with open(record, "a", encoding="utf-8") as out, ThreadPoolExecutor(max_workers) as pool:
        futures = {pool.submit(call, t): (t, k) for t, k in todo}
        for future in tqdm(as_completed(futures), total=len(futures), disable=not progress, desc="annotating"):
            text, key = futures[future]
            try:
                score = future.result()
            except Exception as e:  # noqa: BLE001 -- reported together at the end
                failures.append((text, e))
                continue
            with lock:
                out.write(json.dumps({"key": key, "text": text, "score": score}, ensure_ascii=False) + "\n")
                out.flush()
                os.fsync(out.fileno())
            answers[key] = score
    if failures:
        text, error = failures[0]
        raise AnnotationError(
            f"{len(failures)} of {len(todo)} texts failed after {retries} retries "
            f"(first: {text[:60]!r}: {error!r}); the {len(todo) - len(failures)} answers "
            f"received are in {record}; run again to retry only the failed ones"
        )
    return {t: answers[k] for t, k in zip(texts, keys)}
