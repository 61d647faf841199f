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
    ("train_speed.py", ["--preset", "baby", "--torch-counts"], "--torch-counts changes the PyTorch twin of the bigram"),
])
def test_bad_flags_are_one_line_errors(script, args, message):
    result = bench(script, *args)
    if "PyTorch is not installed" in result.stderr:
        pytest.skip("torch_train.py needs PyTorch")
    err = result.stderr.strip()
    assert result.returncode == 2 and err.startswith("error:") and message in err and "\n" not in err


def test_the_pytorch_bigram_gives_the_same_loss_and_gradient_by_counts_as_by_lookup():
    """benchmarks/train_speed.py --torch-counts times the PyTorch bigram written as nanograd's
    (the loss from pair counts): it must be the same model, with the same gradient."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from torch_gpt import TorchBigram
    finally:
        sys.path.remove(str(BENCHMARKS))
    idx, targets = torch.randint(0, 11, (4, 9)), torch.randint(0, 11, (4, 9))
    grads = []
    for counts in (False, True):
        torch.manual_seed(0)
        model = TorchBigram(11, counts=counts)
        loss = model(idx, targets)
        loss.backward()
        grads.append((loss.item(), model.token_embedding_table.weight.grad))
    (lookup_loss, lookup_grad), (counts_loss, counts_grad) = grads
    assert counts_loss == pytest.approx(lookup_loss, rel=1e-6)
    torch.testing.assert_close(counts_grad, lookup_grad, rtol=1e-5, atol=1e-7)
