"""The benchmark scripts run, print what they promise, and turn bad flags into one line."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"


def import_benchmark(name: str):
    """A benchmark script as a module (they import their neighbour common.py by path, as this
    does; sys.path is put back as it was, whatever the script added to it)."""
    saved = list(sys.path)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    # this tree's gpt and nanograd, not whichever copy is installed (a script's folder is benchmarks/)
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_train_speed_prints_one_json_object_per_implementation():
    result = bench("train_speed.py", "--preset", "bigram", "--no-torch", "--json", "--steps", "2", "--rounds", "1",
                   "--warmup", "1")
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["preset"] == "bigram" and row["impl"] == "nanograd"
    assert row["ms_per_step"] > 0 and row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1


def test_train_speed_runs_nanograd_on_several_processes_as_the_trainer_does():
    result = bench("train_speed.py", "--no-torch", "--json", "--steps", "1", "--rounds", "1", "--warmup", "0",
                   "--workers", "2", "--n-layer", "1", "--n-embd", "32", "--n-head", "1", "--block-size", "16",
                   "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["nanograd_workers"] == 2 and row["ms_per_step"] > 0


def test_allreduce_speed_checks_the_sums_then_times_them():
    from nanograd.distributed import find_mpiexec

    if find_mpiexec() is None:
        pytest.skip("needs mpi4py and an mpiexec (pip install mpi4py mpich)")
    result = subprocess.run([find_mpiexec(), "-n", "3", sys.executable, str(BENCHMARKS / "allreduce_speed.py"),
                             "--presets", "baby", "--rounds", "1", "--calls", "1", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert (row["ranks"], row["params"], row["bytes"]) == (3, 804096, 4 * 804096) and row["ms"] > 0


def test_sample_speed_compares_the_cache_with_recomputing(monkeypatch, capsys):
    """Run in this process, so that the cache's pass can be counted: the cached run must use
    it for every token, and the recomputing run never."""
    from gpt.kvcache import KVCache

    sample_speed = import_benchmark("sample_speed")
    calls = []
    advance = KVCache._advance
    monkeypatch.setattr(KVCache, "_advance", lambda self, ids: (calls.append(ids.shape[1]), advance(self, ids))[1])
    sample_speed.main(["--json", "--tokens", "5"])
    row = json.loads(capsys.readouterr().out)
    assert row["tokens"] == 5 and row["speedup"] > 0 and row["kv_cache_tokens_per_s"] > 0
    assert calls == [1] * (sample_speed.WARMUP_TOKENS + 5)  # the warm-up's tokens and the timed 5, one position each


def test_bench_ops_checks_then_times_every_op():
    result = bench("bench_ops.py", "--no-torch")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 + len(import_benchmark("bench_ops").OPS) + 1 and "checked before timing" in lines[-1]
    wrong = bench("bench_ops.py", "--rounds", "3")
    assert wrong.returncode == 2 and "unrecognized arguments: --rounds 3" in wrong.stderr


def test_sample_speed_refuses_a_model_without_a_cache(tmp_path):
    from gpt import train

    text = tmp_path / "text.txt"
    text.write_text("to be or not to be\n" * 50)
    assert train.main(["--preset", "bigram", "--data", str(text), "--out-dir", str(tmp_path / "bg"),
                       "--max-iters", "1", "--eval-iters", "1", "--sample-tokens", "0", "--quiet"]) == 0
    result = bench("sample_speed.py", "--tokens", "5", "--out-dir", str(tmp_path / "bg"))
    assert result.returncode == 2 and result.stderr.strip().startswith("error: the model in")
    assert "keeps no KV cache" in result.stderr


@pytest.mark.parametrize("script,args,message", [
    ("train_speed.py", ["--n-embd", "-1", "--no-torch"], "n_embd must be positive"),
    ("train_speed.py", ["--steps", "0"], "--steps must be at least 1"),
    ("sample_speed.py", ["--tokens", "0"], "--tokens must be at least 1"),
    ("sample_speed.py", ["--out-dir", "/nonexistent/run"], "no checkpoint"),
    ("torch_train.py", ["--max-iters", "-3"], "--max-iters must be 0 or more"),
    ("train_speed.py", ["--preset", "baby", "--torch-counts"], "--torch-counts changes the PyTorch twin of the bigram"),
    ("train_speed.py", ["--warmup", "-1", "--no-torch"], "--warmup must be 0 or more"),
    ("train_speed.py", ["--memory", "--sweep"], "--memory measures one configuration"),
    ("train_speed.py", ["--device", "tpu"], "unknown device 'tpu'"),
    ("train_speed.py", ["--memory", "--no-torch", "--steps", "1", "--n-embd", str(2**20), "--n-head", "1",
                        "--n-layer", "1"], "measuring nanograd's memory failed: training this model needs at least"),
    ("train_speed.py", ["--no-torch", "--n-embd", str(2**20), "--n-head", "1", "--n-layer", "1"],
     "training this model needs at least"),
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
    TorchBigram = import_benchmark("torch_gpt").TorchBigram
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


@pytest.fixture
def small_text(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("It is the east, and Juliet is the sun. Arise, fair sun, and kill the envious moon!\n" * 300)
    return path


def test_tokenizer_speed_checks_then_times_each_implementation(small_text):
    result = bench("tokenizer_speed.py", "--data", str(small_text), "--vocab-size", "300", "--naive-merges", "5",
                   "--rounds", "1", "--json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert "ours" in json.dumps(row) and "naive" in json.dumps(row)


def test_codebook_trains_a_model_per_tokenizer_and_tabulates_them(small_text, tmp_path, monkeypatch):
    codebook = import_benchmark("codebook")
    monkeypatch.setattr(codebook, "REPO", tmp_path)  # its runs go to tmp_path/out-codebook
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    results = codebook.measure(codebook.build_parser().parse_args(
        ["--data", str(small_text), "--vocab-sizes", "300", "--max-iters", "4", "--eval-interval", "2",
         "--timing-steps", "2", "--rounds", "1"]))
    assert [r["tokenizer"] for r in results] == ["char", "bpe-300"]
    char, bpe = results
    assert char["chars_per_token"] == 1 and bpe["chars_per_token"] > 1.5  # a repeated line merges well
    assert bpe["embedding_params"] == 300 * 128 and 0 < bpe["embedding_share"] < 1
    assert [r["step"] for r in bpe["rows"]] == [0, 2, 4] and bpe["val_bpc"] > 0
    assert char["val_bpc_same_time"] == pytest.approx(char["val_bpc"])
    assert "| bpe-300 | 300 |" in codebook.table(results)


def test_prepare_memory_reports_the_peak_of_a_streamed_corpus(tmp_path):
    result = bench("prepare_memory.py", "--gb", "0.001", "--tokenizer", "char", "--work-dir", str(tmp_path), "--json")
    if "tiny shakespeare is not at" in result.stderr:
        pytest.skip("needs the corpus (.ci/run copies it into data/)")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["text_bytes"] >= 10**6 and 20 * 2**20 < row["peak_rss_bytes"] < 2**30


def test_versus_times_an_earlier_commit_and_this_tree_in_turns():
    result = bench("versus.py", "HEAD", "--rounds", "1", "--", "--preset", "bigram", "--no-torch", "--steps", "2",
                   "--rounds", "1", "--warmup", "0")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert "after/before" in header
    before, after, ratio = (float(v) for v in row.split("|")[1].split())
    assert row.split()[0] == "bigram" and ratio == pytest.approx(after / before, abs=0.01)


def test_versus_refuses_an_unknown_commit_in_one_line():
    result = bench("versus.py", "no-such-commit", "--", "--preset", "bigram")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "git archive" in result.stderr
