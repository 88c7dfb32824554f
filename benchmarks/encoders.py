"""Encoding speed of each backend against plain sentence-transformers, with accuracy and this CPU's limit.

    python benchmarks/encoders.py                  # about 6 minutes on 2 CPU cores
    python benchmarks/encoders.py --texts 1000 --repeats 1

Corpus: 4,000 distinct STS-B English sentences, every dev sentence among them.
Rows, interleaved, best of --repeats, each on the same texts:
  baseline   SentenceTransformer.encode, fp32, batch 64, model loaded and warmed up
  others     embedcache precompute cold (a fresh cache directory: hash, dedupe, encode,
             write float16 shards) through load_encoder(backend=..., precision=...),
             loaded and warmed up the same way
Columns: texts/s, ratio to the baseline, mean cosine to the baseline's vectors,
STS-B en dev Spearman x 100 of cosine similarity, the CPU's limit for that
precision (measured matrix-product rate / the model's FLOPs per text of this
corpus, unpadded) and the fraction of it reached; then per backend the one-off
export seconds and the seconds `embedcache precompute` spends outside encoding
(start-up, model load, reading the file) measured as a subprocess.
Goals on the CPU: best backend >= 3.5x with Spearman within 0.5 points of fp32;
the exact path (fp32 or bf16) >= 1.25x.  On a GPU: torch bf16 >= 2x plain
sentence-transformers fp16, as a fraction of the GPU's bf16 limit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from scipy.stats import spearmanr
from stsb import read_sts

from embedcache import EmbeddingCache, load_encoder, model_directory
from embedcache.encoders.runtimes import cpu_has_bf16

CPU_ROWS = [
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("onnx", "fp32"),
    ("onnx-int8", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino-int8", "fp32"),
    ("openvino-int8", "bf16"),
    ("auto", None),
]


def corpus(n: int) -> tuple[list[str], object]:
    dev, train = read_sts("en", "dev"), read_sts("en", "train")
    texts = list(dict.fromkeys([*dev.s1, *dev.s2, *train.s1, *train.s2]))[:n]
    return texts, dev


def matmul_rate(dtype_name: str, device: str = "cpu") -> float:
    """Best operations per second of a (4096 x 384) @ (384 x 1536) product, the model's typical shape."""
    import torch

    m, k, n = 4096, 384, 1536
    if dtype_name == "int8":
        a = torch.randint(-128, 127, (m, k), dtype=torch.int8, device=device)
        b = torch.randint(-128, 127, (k, n), dtype=torch.int8, device=device)
        op = lambda: torch._int_mm(a, b)
    else:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
        a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
        op = lambda: a @ b
    best = float("inf")
    for i in range(25):
        if device != "cpu":
            torch.cuda.synchronize()
        began = time.perf_counter()
        op()
        if device != "cpu":
            torch.cuda.synchronize()
        if i >= 3:
            best = min(best, time.perf_counter() - began)
    return 2 * m * k * n / best


def flops_per_text(encoder, texts: list[str]) -> float:
    """Mean FLOPs of one text of ``texts`` through the transformer: linear layers and attention, no padding."""
    config = encoder.model[0].auto_model.config
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = np.asarray(encoder.features(texts)["attention_mask"].sum(1), dtype=float)
    per_layer = 2 * lengths * (4 * h * h + 2 * h * f) + 4 * lengths**2 * h
    return float((per_layer * layers).mean())


def limit_dtype(backend: str, precision: str) -> str:
    return "int8" if backend.endswith("int8") else precision


def spearman(vectors: dict, dev) -> float:
    dev = dev[dev.s1.isin(vectors.keys()) & dev.s2.isin(vectors.keys())]  # all of it unless --texts is small
    a = np.stack([vectors[t] for t in dev.s1])
    b = np.stack([vectors[t] for t in dev.s2])
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100 * spearmanr(cos, dev.score).statistic


def precompute_cold(encoder, texts: list[str], root: Path) -> tuple[float, np.ndarray]:
    with tempfile.TemporaryDirectory(dir=root) as d:
        cache = EmbeddingCache(Path(d) / "cache", encoder)
        began = time.perf_counter()
        cache.add(texts)
        seconds = time.perf_counter() - began
        return seconds, cache.get(texts)


def command_overhead(backend: str, precision: str | None, texts: list[str], root: Path) -> float:
    """Seconds `embedcache precompute` spends outside encoding: interpreter start, imports, model load, the file."""
    data = root / "corpus.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    with tempfile.TemporaryDirectory(dir=root) as d:
        flags = ["--backend", backend] + (["--precision", precision] if precision else [])
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "embedcache.cli",
                "precompute",
                str(data),
                "--cache",
                f"{d}/c",
                "--text-col",
                "text",
                "--json",
                "--quiet",
                *flags,
            ],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ,
        )
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        return summary["seconds"] - summary["encode_seconds"]


def export_seconds(root: Path, backend: str) -> str:
    for path in (root / "home" / "exports").glob("*/export.json"):
        record = json.loads(path.read_text())
        if record["backend"] == backend:
            return str(record["export_seconds"])
    return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer

    root = Path(tempfile.mkdtemp(prefix="encoders-bench-"))
    os.environ["EMBEDCACHE_HOME"] = str(root / "home")  # exports made fresh in this run (their seconds are reported)
    texts, dev = corpus(args.texts)
    gpu = torch.cuda.is_available()
    rows = [(b, p) for b, p in CPU_ROWS if p != "bf16" or cpu_has_bf16()]
    if gpu:
        rows = [("torch", "bf16")]

    plain = SentenceTransformer(model_directory("minilm"), device="cuda" if gpu else "cpu")
    if gpu:
        plain.half()
    plain.encode(texts[:64])
    encoders, loads = {}, {}
    for backend, precision in rows:
        began = time.perf_counter()
        options = {"precision": precision} if precision else {}
        encoders[backend, precision] = load_encoder("minilm", backend=backend, calibration=texts, **options)
        loads[backend, precision] = time.perf_counter() - began
        encoders[backend, precision].encode(texts[:64])
    auto = encoders.get(("auto", None))

    best = {key: float("inf") for key in [("baseline", None), *rows]}
    vectors = {}
    for _ in range(args.repeats):
        began = time.perf_counter()
        base = plain.encode(texts, batch_size=64, convert_to_numpy=True)
        best["baseline", None] = min(best["baseline", None], time.perf_counter() - began)
        vectors["baseline", None] = base
        for key in rows:
            seconds, vectors[key] = precompute_cold(encoders[key], texts, root)
            best[key] = min(best[key], seconds)

    device = "cuda" if gpu else "cpu"
    rates = {
        d: matmul_rate(d, device)
        for d in (["bf16", "fp16"] if gpu else ["fp32", "int8"] + (["bf16"] if cpu_has_bf16() else []))
    }
    per_text = flops_per_text(encoders[rows[0]], texts)
    baseline_rate = len(texts) / best["baseline", None]
    where = (
        torch.cuda.get_device_name() if gpu else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(f"\n{len(texts)} STS-B sentences, {where}, torch {torch.__version__}; best of {args.repeats}, interleaved")
    print(
        "matrix products: "
        + ", ".join(f"{d} {r / 1e9:.0f} G{'OP' if d == 'int8' else 'FLOP'}/s" for d, r in rates.items())
        + f"; the model: {per_text / 1e6:.1f} MFLOP per text of this corpus (unpadded)\n"
    )
    print(
        "| row | texts/s | ratio | mean cosine | STS-B dev Spearman | limit texts/s | of limit | export s (once) "
        "| command outside encoding s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_vectors = vectors["baseline", None]
    for key in [("baseline", None), *rows]:
        backend, precision = key
        if key == ("auto", None):
            backend, precision = auto.backend, auto.precision
        rate = len(texts) / best[key]
        cos = np.sum(vectors[key] * base_vectors, 1) / (
            np.linalg.norm(vectors[key], axis=1) * np.linalg.norm(base_vectors, axis=1)
        )
        rho = spearman(dict(zip(texts, vectors[key])), dev)
        dtype = "fp16" if gpu and key[0] == "baseline" else limit_dtype(backend, precision or "fp32")
        limit = rates[dtype] / per_text
        label = (
            "sentence-transformers " + ("fp16" if gpu else "fp32") + " (baseline)"
            if key[0] == "baseline"
            else f"precompute {backend} {precision}" + (" (auto's choice)" if key[0] == "auto" else "")
        )
        if key[0] == "baseline":
            extra = "| - | - |"
        else:
            export = f"choice {loads[key]:.1f}" if key[0] == "auto" else export_seconds(root, backend)
            extra = f"| {export} | {command_overhead(key[0], key[1], texts, root):.1f} |"
        print(
            f"| {label} | {rate:.0f} | {rate / baseline_rate:.2f}x | {cos.mean():.5f} | {rho:.2f} | {limit:.0f} | "
            f"{rate / limit:.0%} ({dtype}) {extra}"
        )
    if auto is not None:
        print(f"\nauto chose {auto.backend} {auto.precision}: {auto.choice['rule']}")
        for m in auto.choice["measured"]:
            print(
                f"  {m['backend']:14s} {m['precision']}  {m['texts_per_s']:7.1f} texts/s  mean cosine {m['mean_cosine']:.5f}"
            )


if __name__ == "__main__":
    main()
