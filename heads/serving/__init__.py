"""Serving scores: ``serve`` (``heads serve``: the FastAPI app, its batcher and metrics) and ``batch_scoring``
(``heads predict --ray``: a file of scores per input file on a Ray cluster)."""
