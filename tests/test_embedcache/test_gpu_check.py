"""benchmarks/gpu.py, the one prepared GPU check (issue 27): its dry run runs every step on the CPU."""

import json
import subprocess
import sys

import pytest
from helpers import ROOT


@pytest.mark.slow
def test_the_gpu_check_dry_run_runs_every_step_and_writes_its_tables(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu.json").read_text())
    for step in ("encode", "heads", "precompute", "serve"):
        assert results[step] and not any("error" in row for row in results[step]), results[step]
    assert {r["run"] for r in results["encode"]} >= {
        "embedcache fp32, tokenizer thread on",
        "embedcache fp32, tokenizer thread off",
    }
    assert all(r["texts_per_s"] > 0 for r in results["encode"])
    text = (tmp_path / "gpu.md").read_text()
    assert text.count("### ") == 4 and "| 1 |" in text  # the serve table, concurrency 1
