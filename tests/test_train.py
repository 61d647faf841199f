"""The trainer and the sampler end to end: presets, checkpoints, resume, bad input."""

from __future__ import annotations

import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nanograd
from gpt import memory, sample, train
from gpt.checkpoint import TrainState, load_checkpoint, load_run, save_checkpoint
from gpt.config import TrainConfig, build_model
from gpt.errors import UserError
from gpt.runlog import TERMINAL_COLUMNS, RunLog

REPO = Path(__file__).resolve().parent.parent
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "2", "--sample-tokens", "0", "--quiet"]


def run_train(*args: str) -> int:
    return train.main([str(a) for a in args])


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_bigram_preset_learns_shakespeare(shakespeare, tmp_path):
    out = tmp_path / "bigram"
    assert run_train("--preset", "bigram", "--data", shakespeare, "--out-dir", out, "--quiet",
                     "--sample-tokens", "0") == 0
    rows = read_metrics(out)
    assert abs(rows[0]["train_loss"] - math.log(65)) < 0.1
    assert abs(rows[0]["val_loss"] - math.log(65)) < 0.1
    assert rows[-1]["step"] == 3000
    assert rows[-1]["val_loss"] <= 2.52
    for key in ("step", "train_loss", "val_loss", "lr", "grad_norm", "elapsed_s", "tokens_per_s"):
        assert key in rows[-1]
    config = json.loads((out / "config.json").read_text())
    assert config["batch_size"] == 32 and config["block_size"] == 8 and config["model"] == "bigram"


def test_run_writes_its_files_and_a_sample(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data", text_file, "--out-dir", out, "--max-iters", "6", "--eval-interval", "3", *TINY]
    assert run_train(*args, "--no-quiet", "--sample-tokens", "20") == 0  # (the last of a flag given twice counts)
    assert [r["step"] for r in read_metrics(out)] == [0, 3, 6]
    assert (out / "ckpt.npz").exists() and (out / "best.npz").exists()
    printed = capsys.readouterr()
    assert "parameters" in printed.out + printed.err
    done = printed.out.split("done: ", 1)[1]
    assert done.startswith("6 steps in ") and " tokens/s in training steps), val loss " in done.split("\n", 1)[0]
    sample = done.split("\n", 1)[1]  # what follows the last log line
    assert len(sample) == 1 + 20 + 1 and set(sample) <= set(text_file.read_text())  # prompt "\n", 20, print's "\n"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "skipping loss.png" in printed.out + printed.err
    else:
        assert (out / "loss.png").stat().st_size > 1000


def test_resume_gives_the_same_weights_as_one_run(text_file, tmp_path):
    common = ["--data", text_file, "--eval-interval", "4", "--dropout", "0.1", "--lr-decay-iters", "8", *TINY]
    assert run_train("--out-dir", tmp_path / "once", "--max-iters", "8", *common) == 0
    assert run_train("--out-dir", tmp_path / "twice", "--max-iters", "4", *common) == 0
    assert run_train("--out-dir", tmp_path / "twice", "--resume", "--max-iters", "8") == 0
    once, _ = load_checkpoint(tmp_path / "once" / "ckpt.npz")
    twice, _ = load_checkpoint(tmp_path / "twice" / "ckpt.npz")
    assert once.keys() == twice.keys()
    for name in once:
        np.testing.assert_array_equal(once[name], twice[name], err_msg=name)


@pytest.mark.parametrize("model", ["gpt", "bigram"])
def test_the_reference_path_trains_as_the_fused_ops_do(text_file, tmp_path, model):
    """--reference runs the lecture's computation (gpt/model.py, gpt/bigram.py) in place of the
    fused ops: in float32 the losses of a short run agree to rounding, not bit for bit."""
    common = ["--data", text_file, "--model", model, "--max-iters", "6", "--eval-interval", "3", *TINY]
    assert run_train("--out-dir", tmp_path / "fused", *common) == 0
    assert run_train("--out-dir", tmp_path / "reference", "--reference", *common) == 0
    fused, reference = read_metrics(tmp_path / "fused"), read_metrics(tmp_path / "reference")
    for row, reference_row in zip(fused, reference, strict=True):
        for key in ("train_loss", "val_loss"):
            assert row[key] == pytest.approx(reference_row[key], rel=1e-5)


@pytest.mark.parametrize("model,fused_ops", [("gpt", {"SelfAttention", "LayerNorm", "Gelu"}),
                                             ("bigram", {"EmbeddingCrossEntropy"})])
def test_reference_runs_the_lectures_ops_in_place_of_the_fused_ones(model, fused_ops):
    ids = np.random.default_rng(0).integers(0, 11, (2, 8))
    ops_run = {}
    for reference in (False, True):
        config = TrainConfig(model=model, reference=reference, n_layer=1, n_head=2, n_embd=8, block_size=8)
        with nanograd.profile() as seconds:
            build_model(config, 11)(ids, ids)[1].backward()
        ops_run[reference] = {name.split(".")[0] for name in seconds}
    assert fused_ops <= ops_run[False] and not fused_ops & ops_run[True]


def test_checkpoint_round_trip_restores_the_model(text_file, tmp_path):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "3", *TINY) == 0
    model, config, tokenizer, meta, _ = load_run(out / "ckpt.npz")
    assert meta["step"] == 3 and config.n_embd == 16
    again, *_ = load_run(out / "ckpt.npz")
    idx = tokenizer.encode("the fox")[None, :].astype(np.int64)
    np.testing.assert_array_equal(model(idx)[0].data, again(idx)[0].data)


def test_sampler_is_seeded_and_stops(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "3", *TINY) == 0
    capsys.readouterr()

    def sample_text(*extra: str) -> str:
        assert sample.main(["--out-dir", str(out), "--max-new-tokens", "40", *extra]) == 0
        return capsys.readouterr().out

    a, b = sample_text("--seed", "3", "--prompt", "the "), sample_text("--seed", "3", "--prompt", "the ")
    assert a == b and a.startswith("the ") and len(a) == len("the ") + 40 + 1
    assert sample_text("--seed", "4", "--prompt", "the ") != a
    stopped = sample_text("--prompt", "to", "--stop", "e", "--max-new-tokens", "500")
    assert stopped.rstrip("\n").endswith("e") and stopped.count("e") == 1
    greedy = sample_text("--temperature", "0", "--seed", "1", "--prompt", "the ")
    assert greedy == sample_text("--temperature", "0", "--seed", "2", "--prompt", "the ")  # no draw
    two = sample_text("--num-samples", "2", "--top-k", "3", "--top-p", "0.9", "--temperature", "0.8")
    assert two.count("---------------") == 1
    # within one block (16) the KV cache changes nothing; beyond it, the window slides differently
    within_block = ("--seed", "5", "--max-new-tokens", "15")
    assert sample_text(*within_block) == sample_text(*within_block, "--no-cache")
    long_prompt = sample_text("--prompt", "the quick brown fox jumps over the lazy dog " * 2)
    assert long_prompt.startswith("the quick")


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--block-size", "-3"], "--block-size must be positive"),
    (["--max-iters", "-1"], "--max-iters must be 0 or more"),
    (["--lr", "nan"], "--lr must be a number"),
    (["--n-embd", "30", "--n-head", "4"], "divisible"),
    (["--preset", "huge"], "unknown preset"),
    (["--dropout", "1.5"], "dropout must be in [0, 1)"),
    (["--val-fraction", "0"], "val_fraction must be between 0 and 1"),
    (["--device", "tpu"], "unknown device"),
    (["--block-size", "5000"], "shorter than"),
    (["--beta1", "-0.1"], "--beta1 must be in [0, 1)"),
    (["--beta2", "1"], "--beta2 must be in [0, 1)"),
    (["--seed", "-1"], "--seed must be 0 or more"),
    (["--lr-decay-iters", "-5"], "--lr-decay-iters must be 0 or more"),
    (["--resume", "--overwrite"], "give one"),
    (["--vocab-size", "abc"], "argument --vocab-size: invalid int value: 'abc' (see python -m gpt.train --help)"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--grad-accum", "13", "--workers", "1"], "--grad-accum 13 cuts each process's share of a batch (12 sequences "
     "of 12, on 1 process) into more micro-batches than it has sequences: at most --grad-accum 12"),
])
def test_bad_flags_get_one_line_errors(text_file, tmp_path, capsys, args, message):
    assert run_train("--data", text_file, "--out-dir", tmp_path / "x", "--quiet", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


@pytest.mark.parametrize("content,message", [
    (None, "not found"),
    (b"", "empty"),
    (b"ab", "shorter than"),
    (b"caf\xe9 au lait " * 20, "UTF-8"),
])
def test_bad_data_files_get_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    assert run_train("--data", path, "--out-dir", tmp_path / "x", *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message.lower() in err.lower() and "\n" not in err


def test_an_out_dir_that_cannot_be_written_is_a_one_line_error(text_file, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "1", *TINY) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err


def test_resume_adds_no_duplicate_metrics_row(text_file, tmp_path):
    out = tmp_path / "run"
    common = ["--data", text_file, "--out-dir", out, "--eval-interval", "2", *TINY]
    assert run_train(*common, "--max-iters", "4") == 0
    assert run_train("--out-dir", out, "--resume", "--max-iters", "6") == 0
    assert run_train("--out-dir", out, "--resume", "--max-iters", "6") == 0  # already finished: nothing new
    assert [r["step"] for r in read_metrics(out)] == [0, 2, 4, 6]


def test_a_failed_save_leaves_the_last_checkpoint_and_resume_evaluates_that_step_again(
        text_file, tmp_path, monkeypatch, capsys):
    """The evaluation at step 4 is logged, then its checkpoint cannot be written (a full disk):
    one line says so, ckpt.npz still holds step 2, and the resumed run drops the orphan row and
    evaluates step 4 again, so that metrics.jsonl stays in step order without duplicates."""
    out = tmp_path / "run"
    common = ["--data", text_file, "--out-dir", out, "--eval-interval", "2", *TINY]
    assert run_train(*common, "--max-iters", "2") == 0
    real_save_checkpoint = train.save_checkpoint

    def disk_full(path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "save_checkpoint", disk_full)
    capsys.readouterr()
    assert run_train("--out-dir", out, "--resume", "--max-iters", "4", "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: could not write {out / 'best.npz'} (No space left on device); " \
                  "the checkpoint there before, if any, is intact"
    assert load_checkpoint(out / "ckpt.npz")[1]["step"] == 2 and read_metrics(out)[-1]["step"] == 4
    monkeypatch.setattr(train, "save_checkpoint", real_save_checkpoint)
    assert run_train("--out-dir", out, "--resume", "--max-iters", "6") == 0
    assert [r["step"] for r in read_metrics(out)] == [0, 2, 4, 6]


def test_a_metrics_line_cut_short_by_a_crash_is_dropped_on_resume(text_file, tmp_path):
    """A crash while the row of step 4 is written: its checkpoint, saved after the row, is not."""
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--eval-interval", "2", "--max-iters", "2", *TINY) == 0
    step_2 = (out / "ckpt.npz").read_bytes()
    assert run_train("--out-dir", out, "--resume", "--max-iters", "4") == 0
    (out / "ckpt.npz").write_bytes(step_2)
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-20])  # the row of step 4 cut short
    assert run_train("--out-dir", out, "--resume", "--max-iters", "6") == 0  # (plots loss.png from every row)
    assert [r["step"] for r in read_metrics(out)] == [0, 2, 4, 6]


@pytest.mark.parametrize("key, value", [
    ("step", "x"), ("step", -5), ("step", 2.5), ("optimizer_t", -1), ("clipped_steps", None),
    ("best_val_loss", "x"), ("elapsed_s", float("nan")), ("batch_rng", {"bit_generator": "PCG64", "state": -1}),
])
def test_resume_refuses_bad_training_state_in_one_line(text_file, tmp_path, capsys, key, value):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "2", *TINY) == 0
    arrays, meta = load_checkpoint(out / "ckpt.npz")
    meta[key] = value
    save_checkpoint(out / "ckpt.npz", arrays, meta)
    capsys.readouterr()
    assert run_train("--out-dir", out, "--resume", "--max-iters", "4", "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no usable training state" in err and "\n" not in err


@pytest.mark.parametrize("value", [64.0, "64", True])
def test_a_checkpoint_whose_sizes_are_not_whole_numbers_is_refused(text_file, tmp_path, capsys, value):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "1", *TINY) == 0
    arrays, meta = load_checkpoint(out / "ckpt.npz")
    meta["config"]["block_size"] = value
    save_checkpoint(out / "ckpt.npz", arrays, meta)
    capsys.readouterr()
    assert sample.main(["--out-dir", str(out), "--max-new-tokens", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--block-size must be a whole number" in err and "\n" not in err


def test_a_checkpoint_with_weights_that_are_not_finite_is_refused(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "1", *TINY) == 0
    arrays, meta = load_checkpoint(out / "ckpt.npz")
    arrays[next(name for name in arrays if name.startswith("model."))].flat[0] = np.nan
    save_checkpoint(out / "ckpt.npz", arrays, meta)
    capsys.readouterr()
    assert sample.main(["--out-dir", str(out), "--max-new-tokens", "5"]) == 2
    assert run_train("--out-dir", out, "--resume", "--max-iters", "2") == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all("weights that are not finite" in line for line in errors)


def test_a_run_trained_on_a_device_this_machine_lacks_says_how_to_go_on(text_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "1", *TINY) == 0
    arrays, meta = load_checkpoint(out / "ckpt.npz")
    meta["config"]["device"] = "cuda"  # as if trained on a GPU
    save_checkpoint(out / "ckpt.npz", arrays, meta)

    def cuda_missing(device: str) -> str:
        if device != "cpu":
            raise RuntimeError(f"--device {device} is not available: no GPU here")
        return device

    monkeypatch.setattr(nanograd.backend, "check_device", cuda_missing)
    capsys.readouterr()
    assert run_train("--out-dir", out, "--resume", "--max-iters", "2") == 2
    err = capsys.readouterr().err.strip()
    assert "was trained with --device cuda" in err and "add --device cpu" in err and "\n" not in err
    assert run_train("--out-dir", out, "--resume", "--max-iters", "2", "--device", "cpu") == 0


def test_quiet_belongs_to_one_invocation_not_to_the_run(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "2", *TINY) == 0  # TINY is --quiet
    capsys.readouterr()
    assert run_train("--out-dir", out, "--resume", "--max-iters", "3") == 0
    assert "resuming" in capsys.readouterr().out  # not quiet any more
    assert json.loads((out / "config.json").read_text())["quiet"] is False


def test_a_resumed_run_on_a_text_too_short_for_its_block_says_the_block_size_stays(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "1", *TINY) == 0
    short = tmp_path / "short.txt"
    short.write_text(text_file.read_text()[:100])  # its val split: 10 tokens, fewer than block size 16 + 1
    capsys.readouterr()
    assert run_train("--out-dir", out, "--resume", "--data", short, "--max-iters", "2") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("shorter than block size 16 + 1: use a longer text (a resumed run keeps its block size)")


@pytest.mark.parametrize("sizes", [
    dict(model="bigram", batch_size=32, block_size=8),
    dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4),
    dict(n_layer=1, n_head=4, n_embd=64, block_size=64, batch_size=6, tie_weights=False, bias=False),
])
def test_the_memory_lower_bound_is_below_what_a_training_step_allocates(sizes):
    """check_memory refuses a run on this estimate, so it must never exceed the truth: here the
    peak of NumPy's allocations (which tracemalloc sees) while the model is built and takes
    one AdamW step."""
    import tracemalloc

    import nanograd
    from nanograd import optim

    config = TrainConfig(**sizes)
    vocab_size = 29
    tracemalloc.start()
    try:
        nanograd.manual_seed(0)
        model = build_model(config, vocab_size)
        opt = optim.AdamW(model.parameters())
        ids = np.random.default_rng(0).integers(0, vocab_size, (2, config.batch_size, config.block_size))
        model(ids[0], ids[1])[1].backward()
        opt.step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert memory.memory_lower_bound(config, vocab_size, training=False) < memory.memory_lower_bound(
        config, vocab_size, training=True) <= peak


def test_sizes_beyond_the_machines_memory_are_refused_in_one_line(text_file, tmp_path, capsys):
    """Instead of the system killing the process without a word once the pages are touched."""
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "1", *TINY) == 0
    capsys.readouterr()
    assert run_train("--data", text_file, "--out-dir", tmp_path / "huge", *TINY, "--batch-size", str(10**12)) == 2
    arrays, meta = load_checkpoint(out / "ckpt.npz")
    meta["config"]["n_layer"] = 10**9
    save_checkpoint(out / "ckpt.npz", arrays, meta)
    assert sample.main(["--out-dir", str(out), "--max-new-tokens", "5"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0].startswith("error: training this model needs at least ")
    assert errors[1].startswith(f"error: the model in {out / 'ckpt.npz'} needs at least ")
    assert len(errors) == 2 and all("GiB of memory: try smaller sizes" in line for line in errors)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_containers_memory_limit_counts_as_the_memory_there_is(tmp_path, monkeypatch, version):
    """docker run --memory 1g: the machine may have more, but the kernel stops the process at
    the container's limit, so that is what check_memory compares with."""
    root, proc = tmp_path / "cgroup", tmp_path / "proc_self_cgroup"
    if version == "v2":
        proc.write_text("0::/box\n")
        (root / "box").mkdir(parents=True)
        (root / "box" / "memory.max").write_text(f"{2**30}\n")
    else:
        proc.write_text("5:cpu,cpuacct:/box\n4:memory:/box\n")
        (root / "memory" / "box").mkdir(parents=True)
        (root / "memory" / "box" / "memory.limit_in_bytes").write_text(f"{2**30}\n")
        (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # the host's: none
    assert memory.cgroup_memory_limits(proc, root) == [2**30] + ([9223372036854771712] if version == "v1" else [])
    limits = memory.cgroup_memory_limits
    monkeypatch.setattr(memory, "cgroup_memory_limits", lambda: limits(proc, root))  # check_memory reads these
    memory.check_memory(2**30 - 1, "this")
    with pytest.raises(UserError, match=r"^this needs at least 1.0 GiB, more than this container's limit of "
                                            r"1.0 GiB of memory: try smaller sizes$"):
        memory.check_memory(2**30 + 2**20, "this")
    if version == "v2":
        (root / "box" / "memory.max").write_text("max\n")  # no limit
        assert limits(proc, root) == []
    else:
        (root / "memory" / "box" / "memory.limit_in_bytes").unlink()
        assert limits(proc, root) == [9223372036854771712]  # v1's "no limit"
    memory.check_memory(2**30 + 2**20, "this")  # the machine has more than 1 GiB


def test_an_out_dir_that_is_a_file_is_refused(text_file, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a directory")
    assert run_train("--data", text_file, "--out-dir", tmp_path / "taken", "--max-iters", "1", *TINY) == 2
    assert capsys.readouterr().err.strip() == f"error: --out-dir {tmp_path / 'taken'} is a file, not a directory"


def test_resume_from_a_checkpoint_without_training_state_is_refused(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "2", *TINY) == 0
    arrays, meta = load_checkpoint(out / "ckpt.npz")
    del meta["optimizer_t"]
    save_checkpoint(out / "ckpt.npz", {k: v for k, v in arrays.items() if k.startswith("model.")}, meta)
    capsys.readouterr()
    assert run_train("--out-dir", out, "--resume", "--max-iters", "4", "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no usable training state" in err and "\n" not in err
    assert sample.main(["--out-dir", str(out), "--max-new-tokens", "5"]) == 0  # the weights still sample


def test_checkpoints_get_an_ordinary_file_mode(text_file, tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "1", *TINY) == 0
    finally:
        os.umask(old)
    assert (out / "ckpt.npz").stat().st_mode & 0o777 == 0o644


def test_sampling_into_a_closed_pipe_ends_quietly(text_file, tmp_path):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "1", *TINY) == 0
    sampler = subprocess.Popen([sys.executable, "-m", "gpt.sample", "--out-dir", str(out), "--max-new-tokens",
                                "100000"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler.stdout.read(5)
    sampler.stdout.close()  # the reader goes away, as `| head -c 5` does
    assert sampler.wait(timeout=60) == 1
    assert sampler.stderr.read() == b""


def test_bad_checkpoints_and_prompts_get_one_line_errors(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert sample.main(["--out-dir", str(out)]) == 2  # no checkpoint yet
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "2", *TINY) == 0
    capsys.readouterr()
    assert sample.main(["--out-dir", str(out), "--prompt", "Zebra€"]) == 2
    err = capsys.readouterr().err
    assert "'Z'" in err and "'€'" in err
    assert run_train("--out-dir", out, "--resume", "--n-embd", "32") == 2
    assert "different model configuration" in capsys.readouterr().err
    ckpt = out / "ckpt.npz"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # truncated
    assert sample.main(["--out-dir", str(out)]) == 2
    ckpt.write_bytes(b"not a checkpoint at all")
    assert sample.main(["--out-dir", str(out)]) == 2
    assert run_train("--out-dir", out, "--resume") == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error:") for line in errors)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the loop's overflows warn of nothing
def test_diverging_loss_stops_with_the_last_good_checkpoint(text_file, tmp_path, capfd):
    """One line, and only that: capfd also catches what the second rank (under mpiexec) writes to stderr."""
    out = tmp_path / "run"
    code = run_train("--data", text_file, "--out-dir", out, "--max-iters", "50", "--eval-interval", "100",
                     "--lr", "1e30", "--warmup-iters", "0", "--grad-clip", "0", *TINY, "--workers", "2")
    assert code == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: the loss became") and "\n" not in err
    _, meta = load_checkpoint(out / "ckpt.npz")
    assert meta["step"] == 0  # the evaluation at step 0 wrote it; nothing after overwrote it


def test_a_loss_that_is_not_finite_at_an_evaluation_is_not_saved(text_file, tmp_path, capsys, monkeypatch):
    """The val loss of the evaluation at step 4 is nan (put there, not left to how a CPU rounds)."""
    estimate_loss = train.estimate_loss
    evaluations = iter(range(100))

    def nan_at_the_third(*args, **kwargs):
        loss = estimate_loss(*args, **kwargs)
        return math.nan if next(evaluations) == 5 else loss  # 0-1: step 0, 2-3: step 2, 5: step 4's val

    monkeypatch.setattr(train, "estimate_loss", nan_at_the_third)
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "8", "--eval-interval", "2", *TINY) == 2
    assert capsys.readouterr().err.strip().startswith("error: the val loss became nan at step 4; the last good "
                                                      f"checkpoint is {out / 'ckpt.npz'}")
    assert load_checkpoint(out / "ckpt.npz")[1]["step"] == 2 and [r["step"] for r in read_metrics(out)] == [0, 2]


def test_a_checkpoint_is_written_only_when_every_array_in_it_is_finite(text_file, tmp_path, capsys, monkeypatch):
    """At step 3 one of AdamW's second moments becomes inf (as a gradient of norm 1e20, squared,
    overflows float32; put there, not left to how a CPU rounds) while the loss and the weights stay
    finite: the evaluation at step 4 saves nothing, and the run stops with step 2's checkpoint."""
    step = train.train_step

    def overflow_at_step_3(model, optimizer, *args, **kwargs):
        result = step(model, optimizer, *args, **kwargs)
        if optimizer.t == 3:
            optimizer.flat[0][1].v[-1] = np.inf
        return result

    monkeypatch.setattr(train, "train_step", overflow_at_step_3)
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "8", "--eval-interval", "2", *TINY) == 2
    assert capsys.readouterr().err.startswith(
        "error: the optimizer's moments stopped being finite by step 4 (optim.group0.v); the last good checkpoint is ")
    arrays, meta = load_checkpoint(out / "ckpt.npz")
    assert meta["step"] == 2 and not train.not_finite(arrays) and [r["step"] for r in read_metrics(out)] == [0, 2, 4]
    assert not train.not_finite(load_checkpoint(out / "best.npz")[0])


def test_a_checkpoint_whose_optimizer_moments_are_not_finite_samples_but_does_not_resume(text_file, tmp_path,
                                                                                          capsys):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "2", *TINY) == 0
    (out / "best.npz").unlink()
    arrays, meta = load_checkpoint(out / "ckpt.npz")
    arrays["optim.group0.v"].flat[3] = np.inf
    save_checkpoint(out / "ckpt.npz", arrays, meta)
    capsys.readouterr()
    assert run_train("--out-dir", out, "--resume", "--max-iters", "4") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: checkpoint {out / 'ckpt.npz'} holds optimizer moments that are not finite (optim.group0.v): it "
        "cannot be resumed, but it can be sampled from; start the run over with --overwrite")
    assert sample.main(["--out-dir", str(out), "--max-new-tokens", "5"]) == 0


def test_weights_that_are_no_longer_finite_are_never_saved(tmp_path, capsys, monkeypatch):
    from gpt.bigram import BigramLanguageModel

    corpus = tmp_path / "text.txt"
    corpus.write_text("abc" * 300 + "Q")  # Q comes last: never an input, so its row never reaches a loss
    model = BigramLanguageModel(4)
    model.token_embedding_table.weight.data[0] = np.nan  # Q's row (Q sorts first)
    monkeypatch.setattr(train, "build_model", lambda config, vocab_size: model)
    out = tmp_path / "run"
    assert run_train("--preset", "bigram", "--data", corpus, "--out-dir", out, "--max-iters", "0", "--batch-size",
                     "4", "--eval-iters", "2", "--sample-tokens", "0", "--quiet") == 2
    assert capsys.readouterr().err.startswith("error: the weights stopped being finite by step 0 "
                                              "(model.token_embedding_table.weight); no checkpoint was written")
    assert not (out / "ckpt.npz").exists() and not (out / "best.npz").exists()


def test_a_new_run_does_not_replace_an_earlier_one(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data", text_file, "--out-dir", out, *TINY]
    assert run_train(*args, "--max-iters", "4") == 0
    before = (out / "ckpt.npz").read_bytes()
    assert run_train(*args, "--max-iters", "0") == 2
    err = capsys.readouterr().err.strip()
    assert "holds an earlier run" in err and "--overwrite" in err and "\n" not in err
    assert (out / "ckpt.npz").read_bytes() == before and len(read_metrics(out)) == 2
    assert run_train(*args, "--max-iters", "0", "--overwrite") == 0
    assert load_checkpoint(out / "ckpt.npz")[1]["step"] == 0 and len(read_metrics(out)) == 1


def test_resume_without_out_dir_goes_on_in_out(text_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_train("--data", text_file, "--out-dir", "first", "--max-iters", "2", *TINY) == 0
    (tmp_path / "first").rename(tmp_path / "out")  # the checkpoint still names "first" as its out_dir
    assert run_train("--resume", "--max-iters", "4", "--quiet") == 0
    assert load_checkpoint(tmp_path / "out" / "ckpt.npz")[1]["step"] == 4
    assert not (tmp_path / "first").exists()


def test_resume_keeps_the_preset(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "2", *TINY) == 0
    assert run_train("--out-dir", out, "--resume", "--preset", "bigram", "--quiet") == 2
    assert "--preset baby" in capsys.readouterr().err


def test_a_checkpoint_config_of_the_wrong_types_is_a_user_error(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "1", *TINY) == 0
    arrays, meta = load_checkpoint(out / "ckpt.npz")
    for config in ({**meta["config"], "n_layer": "2"}, ["abc"]):
        save_checkpoint(out / "ckpt.npz", arrays, {**meta, "config": config})
        capsys.readouterr()
        assert sample.main(["--out-dir", str(out)]) == 2
        assert run_train("--out-dir", out, "--resume") == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 2 and all(e.startswith("error:") and "no usable config" in e for e in errors)


def test_explain_refuses_a_picture_it_cannot_write_before_any_work(tmp_path, capsys, monkeypatch):
    from gpt import explain

    text = tmp_path / "text.txt"
    text.write_text("to be or not to be\n" * 50)
    out = tmp_path / "bg"
    assert run_train("--preset", "bigram", "--data", text, "--out-dir", out, "--max-iters", "1", *TINY) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    for png, message in ((".", "is a directory"), ("nowhere/x.png", "there is no directory nowhere"),
                         ("x.bmp", "matplotlib cannot write .bmp files")):
        if message.startswith("matplotlib"):
            pytest.importorskip("matplotlib")
        assert explain.main(["bigram", "--out-dir", str(out), "--char", "t", "--png", png]) == 2
        printed = capsys.readouterr()
        assert printed.out == "" and printed.err.startswith("error: --png") and message in printed.err
    assert explain.main(["vocab", "--data", str(text), "--text", "xyz"]) == 2
    assert capsys.readouterr().err.startswith("error: --text 'xyz': characters not in the vocabulary")
    pytest.importorskip("matplotlib")
    assert explain.main(["bigram", "--out-dir", str(out), "--char", "t", "--png", "table"]) == 0
    assert "wrote table.png" in capsys.readouterr().out and (tmp_path / "table.png").stat().st_size > 1000


def test_negative_seeds_are_one_line_errors(text_file, tmp_path, capsys):
    from gpt import explain

    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "1", *TINY) == 0
    capsys.readouterr()
    assert sample.main(["--out-dir", str(out), "--seed", "-1"]) == 2
    assert "--seed must be 0 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # argparse: its usage line, then the error
        explain.main(["batch", "--seed", "-1"])
    assert stop.value.code == 2 and "must be an integer >= 0" in capsys.readouterr().err


def test_the_default_prompt_needs_no_newline_in_the_corpus(tmp_path, capsys):
    corpus = tmp_path / "no_newline.txt"
    corpus.write_text("abcabcabd" * 30)
    out = tmp_path / "run"
    assert run_train("--data", corpus, "--out-dir", out, "--max-iters", "2", *TINY) == 0
    capsys.readouterr()
    assert sample.main(["--out-dir", str(out), "--max-new-tokens", "5"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("a") and len(text) == 1 + 5 + 1


def test_running_out_of_memory_is_a_one_line_error(capsys):
    from gpt.errors import exit_status

    def too_big():
        raise MemoryError("Unable to allocate 21.8 TiB for an array")

    assert exit_status(too_big) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of memory") and "21.8 TiB" in err and "\n" not in err


def test_ctrl_c_saves_and_resume_continues(text_file, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gpt.train", "--data", str(text_file), "--out-dir", str(out),
           "--max-iters", "100000", "--eval-interval", "100000", *TINY]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 60
    while not (out / "ckpt.npz").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # let it take some steps
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr  # stopped, not finished: a script can tell
    assert "interrupted: saved step" in stderr and "Traceback" not in stderr
    _, meta = load_checkpoint(out / "ckpt.npz")
    k = meta["step"]
    assert k > 0 and [r["step"] for r in read_metrics(out)] == [0]  # step k was never evaluated
    assert run_train("--out-dir", out, "--resume", "--max-iters", str(k)) == 0  # nothing to train: evaluate
    assert run_train("--out-dir", out, "--resume", "--max-iters", str(k + 2)) == 0
    _, meta_after = load_checkpoint(out / "ckpt.npz")
    assert meta_after["step"] == k + 2
    assert [r["step"] for r in read_metrics(out)] == [0, k, k + 2]


def _start_training(out: Path, text_file: Path, *args: str) -> subprocess.Popen:
    """gpt.train in a process of its own, showing a progress bar as on a terminal 80 wide."""
    cmd = [sys.executable, "-m", "gpt.train", "--data", str(text_file), "--out-dir", str(out), *TINY, *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", TERMINAL_COLUMNS: "80"})


def test_two_runs_started_at_once_in_one_new_out_dir_one_is_refused_and_the_other_is_whole(text_file, tmp_path):
    out = tmp_path / "run"
    runs = [_start_training(out, text_file, "--max-iters", "1000", "--eval-interval", "250") for _ in range(2)]
    ended = [(proc.pid, proc.wait(timeout=300), proc.stderr.read()) for proc in runs]
    (winner, _, _), (_, _, refusal) = sorted(ended, key=lambda e: e[1])  # exit 0 first, then 2
    assert sorted(code for _, code, _ in ended) == [0, 2], ended
    assert refusal.strip() == f"error: another run (pid {winner}) is training in {out}: wait for it to finish, " \
                              "or choose another --out-dir"
    assert [r["step"] for r in read_metrics(out)] == [0, 250, 500, 750, 1000]  # one run's rows, each once
    _, meta = load_checkpoint(out / "ckpt.npz")
    assert meta["step"] == 1000
    assert run_train("--out-dir", out, "--resume", "--max-iters", "1001") == 0  # and the lock is free again


def test_a_run_in_progress_holds_its_out_dir_and_a_dead_ones_lock_file_does_not(text_file, tmp_path, capsys):
    from gpt.fileio import LOCK_NAME, claim_directory

    out = tmp_path / "run"
    with claim_directory(out):  # as a running trainer holds it
        assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "2", *TINY) == 2
        assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "2", "--overwrite", *TINY) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(f"another run (pid {os.getpid()})" in line for line in errors)
    (out / LOCK_NAME).write_text("999999999\n")  # left by a run that was killed: no process holds it
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "2", *TINY) == 0


def test_a_refused_run_names_a_holder_that_has_locked_but_not_yet_written_its_pid(tmp_path):
    """The holder writes its pid just after taking the lock: a run refused in between waits for
    it (two runs started at once met this window)."""
    import fcntl
    import threading

    from gpt.fileio import LOCK_NAME, claim_directory

    out = tmp_path / "run"
    out.mkdir()
    lock = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # locked, the file still empty
    late = threading.Timer(0.2, lambda: os.write(lock, b"4242\n"))
    late.start()
    try:
        with pytest.raises(UserError, match=r"another run \(pid 4242\)"), claim_directory(out):
            pass
    finally:
        late.join()
        os.close(lock)


def test_a_refused_run_leaves_no_out_dir_behind(tmp_path, capsys):
    out = tmp_path / "never"
    assert run_train("--data", tmp_path / "missing.txt", "--out-dir", out, *TINY) == 2
    assert run_train("--data", tmp_path, "--out-dir", out, *TINY) == 2
    assert not out.exists()


def test_a_damaged_checkpoint_names_the_intact_one_beside_it(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "6", "--eval-interval", "3", *TINY) == 0
    best_step = load_checkpoint(out / "best.npz")[1]["step"]
    capsys.readouterr()
    ckpt, best = out / "ckpt.npz", out / "best.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    assert sample.main(["--out-dir", str(out)]) == 2
    assert f"{best} (step {best_step}) is intact: sample from it with --best" in capsys.readouterr().err
    assert sample.main(["--out-dir", str(out), "--best", "--max-new-tokens", "5"]) == 0
    assert run_train("--out-dir", out, "--resume") == 2
    err = capsys.readouterr().err
    assert f"copy it over {ckpt} to resume from there, or start over with --overwrite" in err
    ckpt.write_bytes(best.read_bytes())  # as the error says
    assert run_train("--out-dir", out, "--resume", "--max-iters", "8") == 0
    best.write_bytes(b"damaged too")
    ckpt.write_bytes(b"damaged")
    assert run_train("--out-dir", out, "--resume") == 2
    assert capsys.readouterr().err.strip().endswith("start the run over with --overwrite")
    assert sample.main(["--out-dir", str(out), "--best"]) == 2
    assert capsys.readouterr().err.strip().endswith("its run has no other usable checkpoint")


def test_ctrl_c_during_an_evaluation_stops_it_at_once_and_saves(text_file, tmp_path):
    out = tmp_path / "run"
    args = ["--max-iters", "10", "--eval-interval", "5", "--eval-iters", "20000"]  # an evaluation of 10 s or more
    proc = _start_training(out, text_file, *args, "--no-quiet")
    shown, deadline = b"", time.time() + 60
    while b"evaluating train loss: batch" not in shown:  # (the bar rewrites one line: no readline)
        assert time.time() < deadline and proc.poll() is None, f"no evaluation shown: {shown[-300:]}"
        if select.select([proc.stderr], [], [], 1)[0]:
            shown += os.read(proc.stderr.fileno(), 4096)
    proc.send_signal(signal.SIGINT)
    sent = time.perf_counter()
    _, stderr = proc.communicate(timeout=60)
    assert time.perf_counter() - sent < 5  # (under a second where nothing else competes for the CPU)
    assert proc.returncode == 130 and "interrupted: saved step 0" in stderr and "Traceback" not in stderr
    assert load_checkpoint(out / "ckpt.npz")[1]["step"] == 0
    assert read_metrics(out) == []  # the evaluation was cut short: resuming does it again
    assert run_train("--out-dir", out, "--resume", "--eval-iters", "2") == 0
    assert [r["step"] for r in read_metrics(out)] == [0, 5, 10]


def test_resuming_a_finished_run_says_so_in_one_line_and_changes_no_file(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "4", "--eval-interval", "2", *TINY) == 0
    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in out.iterdir()}
    capsys.readouterr()
    assert run_train("--out-dir", out, "--resume", "--grad-accum", "2", "--sample-tokens", "20", "--no-quiet") == 0
    printed = capsys.readouterr()
    assert printed.err == "" and printed.out == (f"the run in {out} is finished: it took its 4 steps (--max-iters 4) "
                                                 "and was evaluated there; a larger --max-iters trains it on\n")
    assert {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in out.iterdir()} == before


def test_where_output_is_no_terminal_a_line_gives_the_loss_and_speed_every_log_interval(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "7", "--eval-interval", "7", *TINY,
                     "--no-quiet", "--log-interval", "3") == 0
    lines = capsys.readouterr().out.splitlines()
    log_line = re.compile(r"step \d+: loss \d\.\d{4}, \d+\.\d ms/step, [\d,]+ tokens/s")
    logged = [line for line in lines if log_line.fullmatch(line)]
    assert [line.split(":")[0] for line in logged] == ["step 3", "step 6"]
    done = next(line for line in lines if line.startswith("done: "))
    assert re.match(r"done: 7 steps in \d+\.\ds \([\d,]+ tokens/s in training steps\), val loss \d\.\d{4}; ", done)


def test_quiet_prints_the_evaluations_and_nothing_else(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "4", "--eval-interval", "2", *TINY,
                     "--log-interval", "1", "--sample-tokens", "10") == 0  # TINY is --quiet
    printed = capsys.readouterr()
    assert printed.err == "" and [line.split(":")[0] for line in printed.out.splitlines()] == ["step 0", "step 2",
                                                                                                 "step 4"]
    assert all(" train loss " in line for line in printed.out.splitlines())


def test_the_bars_speed_and_time_left_count_training_steps_alone(tmp_path, monkeypatch):
    """An evaluation (here half a second asleep) between two steps counts for neither the bar's
    rate nor its time left, which come from the training steps alone."""
    monkeypatch.setenv(TERMINAL_COLUMNS, "80")  # as on a terminal 80 wide
    state = TrainState(np.random.default_rng(0))
    with RunLog(tmp_path, 1000, 0, 768, 100, {"train": 1.0, "val": 1.0}, quiet=False, shown=True) as log:
        for _ in range(2):
            time.sleep(0.5)  # an evaluation
            log.evaluation(state, {"train": 1.0, "val": 1.0}, math.nan, 1e-3)
            for _ in range(5):
                state.step += 1
                log.step(state, 1.0, 1.0, 0.001)
        shown = log.bar.format_dict
        assert shown["elapsed"] < 0.4 and shown["n"] == 10
        assert "evaluating" not in str(shown["postfix"])
