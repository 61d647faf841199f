"""The benchmark scripts run, print what they promise, and turn bad flags into one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300)


def test_train_speed_prints_one_json_object_per_implementation():
    result = bench("train_speed.py", "--preset", "bigram", "--no-torch", "--json", "--steps", "2", "--rounds", "1",
                   "--warmup", "1")
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["preset"] == "bigram" and row["impl"] == "nanograd"
    assert row["ms_per_step"] > 0 and row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1


def test_sample_speed_compares_the_cache_with_recomputing():
    result = bench("sample_speed.py", "--json", "--tokens", "5")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["tokens"] == 5 and row["speedup"] > 0 and row["kv_cache_tokens_per_s"] > 0


@pytest.mark.parametrize("script,args,message", [
    ("train_speed.py", ["--n-embd", "-1", "--no-torch"], "--n-embd must be positive"),
    ("train_speed.py", ["--steps", "0"], "--steps must be at least 1"),
    ("sample_speed.py", ["--tokens", "0"], "--tokens must be at least 1"),
    ("sample_speed.py", ["--out-dir", "/nonexistent/run"], "no checkpoint"),
    ("torch_train.py", ["--max-iters", "-3"], "--max-iters must be 0 or more"),
])
def test_bad_flags_are_one_line_errors(script, args, message):
    result = bench(script, *args)
    if "PyTorch is not installed" in result.stderr:
        pytest.skip("torch_train.py needs PyTorch")
    err = result.stderr.strip()
    assert result.returncode == 2 and err.startswith("error:") and message in err and "\n" not in err
