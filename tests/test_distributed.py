"""Data parallelism over MPI ranks (nanograd.distributed, gpt.train): the losses of one process
from any number of ranks, gradient accumulation that changes nothing but the memory, and every
rank stopped in one line whatever goes wrong on one of them."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nanograd
from gpt import train
from gpt.checkpoint import load_checkpoint
from gpt.config import TrainConfig
from gpt.fileio import LOCK_NAME
from gpt.model import GPT, GPTConfig
from gpt.runlog import TERMINAL_COLUMNS
from nanograd import distributed, optim
from nanograd.distributed import World

REPO = Path(__file__).resolve().parent.parent
FAULTS = Path(__file__).resolve().parent / "faults.py"
MPIEXEC = distributed.find_mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpi4py and an mpiexec (pip install mpi4py mpich)")
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "6",
        "--eval-iters", "3", "--sample-tokens", "0", "--quiet"]


class Rank(World):
    """Rank `rank` of a world of `size`, without MPI: for what a rank computes on its own."""

    def __init__(self, rank: int, size: int):
        super().__init__()
        self.rank, self.size = rank, size


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def losses(out_dir: Path) -> list[tuple[float, float]]:
    return [(row["train_loss"], row["val_loss"]) for row in read_metrics(out_dir)]


def train_run(*args) -> subprocess.CompletedProcess:
    """python -m gpt.train with these flags, as a user starts it (--workers N: N ranks, under mpiexec)."""
    return subprocess.run([sys.executable, "-m", "gpt.train", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def weights(out_dir: Path) -> dict[str, np.ndarray]:
    """The weights and optimizer moments of a run's last checkpoint."""
    return load_checkpoint(out_dir / "ckpt.npz")[0]


def mpiexec_run(n: int, *args) -> subprocess.CompletedProcess:
    """mpiexec -n N python -m gpt.train with these flags, as a user starts it by hand."""
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-m", "gpt.train", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


# ---- one process: what a rank computes ---------------------------------------------------------

def test_a_world_of_one_changes_nothing():
    world = World()
    p = nanograd.nn.Parameter(np.ones(3, np.float32))
    p.grad = np.full(3, 2.0, np.float32)
    world.all_reduce_gradients([p])
    np.testing.assert_array_equal(p.grad, [2.0, 2.0, 2.0])
    assert (world.rank, world.size, world.sum(1.5), world.any(True), world.broadcast("x"), world.gather(3)) == \
        (0, 1, 1.5, True, "x", [3])


@pytest.mark.parametrize("b, size, grad_accum", [(12, 2, 1), (12, 5, 1), (12, 5, 2), (3, 3, 4)])
def test_the_ranks_micro_batches_cover_the_batch_once_and_evenly(b, size, grad_accum):
    x = np.arange(b)[:, None] * np.ones((1, 4), int)  # (B, T): row i holds i
    rows = [[int(row[0]) for xm, _ in train.micro_batches(x, x + 1, Rank(r, size), grad_accum) for row in xm]
            for r in range(size)]
    assert sorted(sum(rows, [])) == list(range(b))
    assert max(map(len, rows)) - min(map(len, rows)) <= 1


def float64_gpt() -> GPT:
    nanograd.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8))
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    return model


def one_update(world: World, x, y, grad_accum: int) -> tuple[float, list[np.ndarray]]:
    """The loss and the weights after one train_step of a float64 tiny GPT on batch (x, y)."""
    model = float64_gpt()
    optimizer = optim.AdamW(train.parameter_groups(model.parameters(), 0.1), lr=0.1)
    config = TrainConfig(grad_accum=grad_accum, grad_clip=1.0)
    loss, _, _ = train.train_step(model, optimizer, world, x, y, config)
    return loss, [p.data.copy() for p in model.parameters()]


@pytest.mark.parametrize("grad_accum", [2, 3, 12])
def test_micro_batches_give_the_update_of_the_whole_batch(grad_accum):
    """The lecture's notes: batch 1 run 32 times learns what batch 32 does once, up to the
    averaging. Here 12 sequences in grad_accum micro-batches (12: one at a time, 3 and 2:
    uneven pieces of 5 and 4, or 6), each loss scaled by its share of the batch before its
    backward: the loss, the clipped gradient and the AdamW step of one batch of 12, to float64
    rounding."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (12, 6)), rng.integers(0, 11, (12, 6))
    loss_whole, weights_whole = one_update(World(), x, y, grad_accum=1)
    loss_pieces, weights_pieces = one_update(World(), x, y, grad_accum=grad_accum)
    assert loss_pieces == pytest.approx(loss_whole, rel=1e-13)
    # atol: a micro-batch sum adds the gradient in another order, and AdamW's first step divides
    # by |g| + eps, so where a gradient is near eps its float64 rounding moves a weight (~0.1) by
    # ~1e-14 (1.2e-14 under NumPy 1.24.0): still 1e-11 of the weight, far below any real error
    for whole, pieces in zip(weights_whole, weights_pieces):
        np.testing.assert_allclose(pieces, whole, rtol=1e-12, atol=1e-13)


def test_uneven_shares_weigh_each_ranks_gradient_by_its_size():
    """B 12 over 5 ranks (3 3 2 2 2): each rank's gradient, its loss scaled by its share, summed
    as the Allreduce sums them, is the whole batch's (float64)."""
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, (12, 6)), rng.integers(0, 11, (12, 6))
    model = float64_gpt()
    whole_loss = model(x, y)[1]
    whole_loss.backward()
    whole = [p.grad.copy() for p in model.parameters()]
    summed, loss_sum = [np.zeros_like(g) for g in whole], 0.0
    for rank in range(5):
        model.zero_grad()
        for xm, ym in train.micro_batches(x, y, Rank(rank, 5), 1):
            loss = model(xm, ym)[1] * (len(xm) / len(x))
            loss.backward()
            loss_sum += loss.item()
        for total, p in zip(summed, model.parameters()):
            total += p.grad
    assert loss_sum == pytest.approx(whole_loss.item(), rel=1e-13)
    for total, g in zip(summed, whole):
        np.testing.assert_allclose(total, g, rtol=1e-11, atol=1e-14)


# ---- the launcher ------------------------------------------------------------------------------

def test_without_mpi_the_trainer_says_so_and_trains_in_one_process(text_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "find_mpiexec", lambda: None)
    args = ["--data", text_file, "--out-dir", tmp_path / "run", "--max-iters", "2", *TINY, "--workers", "2"]
    assert train.main([str(a) for a in args]) == 0
    assert capsys.readouterr().err.strip() == train.NO_MPI
    assert json.loads((tmp_path / "run" / "config.json").read_text())["workers"] == 1


def test_the_process_count_follows_the_settings(monkeypatch):
    monkeypatch.setattr(nanograd.backend, "blas_threads", lambda: 2)
    shape = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, batch_size=6)
    assert TrainConfig().data_parallel_workers() == 2  # the baby model: both cores pay
    assert TrainConfig(**shape).data_parallel_workers() == 1  # too small a step to share
    assert TrainConfig(**shape, workers=2).data_parallel_workers() == 2
    assert TrainConfig(model="bigram").data_parallel_workers() == 1
    assert TrainConfig(device="cuda").data_parallel_workers() == 1


# ---- several ranks -----------------------------------------------------------------------------

ALL_REDUCE = """
import numpy as np
from nanograd import distributed, nn
world = distributed.world()
r = world.rank
everywhere = nn.Parameter(np.full(3, 1.0, np.float32))
everywhere.grad = np.full(3, r + 1.0, np.float32)
on_rank0 = nn.Parameter(np.zeros((2, 2)))  # float64: a buffer of its own
on_rank0.grad = np.ones((2, 2)) if r == 0 else None
nowhere = nn.Parameter(np.zeros(2, np.float32))
world.all_reduce_gradients([everywhere, on_rank0, nowhere])
assert everywhere.grad.tolist() == [6.0] * 3 and everywhere.grad.dtype == np.float32
assert on_rank0.grad.tolist() == [[1.0, 1.0], [1.0, 1.0]] and nowhere.grad is None
assert world.sum(r) == 3 and world.any(r == 2) and not world.any(False)
assert world.broadcast(r) == 0 and world.gather(r) == [0, 1, 2]
places = world.gather((r, world.local_rank, world.local_size))
if r == 0:
    print(places)
"""


@needs_mpi
def test_all_reduce_sums_the_gradients_of_every_rank(tmp_path):
    script = tmp_path / "all_reduce.py"
    script.write_text(ALL_REDUCE)
    done = subprocess.run([MPIEXEC, "-n", "3", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "[(0, 0, 3), (1, 1, 3), (2, 2, 3)]\n"  # (rank, local rank, ranks on the machine)


@needs_mpi
def test_any_number_of_ranks_prints_the_losses_of_one_process(text_file, tmp_path):
    """Dropout off: the same losses within float32 rounding from 1, 2 (started by the trainer
    itself) and 4 ranks (by hand, more than the cores: 2 ranks get 1 sequence of 6, 2 get 2);
    and with the same number of ranks, exactly the same numbers."""
    args = ["--data", text_file, "--max-iters", "20", "--eval-interval", "10", *TINY]
    for name, done in [("one", train_run(*args, "--out-dir", tmp_path / "one", "--workers", 1)),
                       ("two", train_run(*args, "--out-dir", tmp_path / "two", "--workers", 2)),
                       ("again", train_run(*args, "--out-dir", tmp_path / "again", "--workers", 2)),
                       ("four", mpiexec_run(4, *args, "--out-dir", tmp_path / "four"))]:
        assert done.returncode == 0, (name, done.stderr)
    one = losses(tmp_path / "one")
    assert len(one) == 3
    for name in ("two", "four"):
        np.testing.assert_allclose(losses(tmp_path / name), one, rtol=2e-6, err_msg=name)
    timings = ("elapsed_s", "tokens_per_s")
    assert [{k: v for k, v in row.items() if k not in timings} for row in read_metrics(tmp_path / "again")] == \
        [{k: v for k, v in row.items() if k not in timings} for row in read_metrics(tmp_path / "two")]
    two, again = load_checkpoint(tmp_path / "two" / "ckpt.npz")[0], load_checkpoint(tmp_path / "again" / "ckpt.npz")[0]
    for name in two:
        np.testing.assert_array_equal(two[name], again[name], err_msg=name)
    assert json.loads((tmp_path / "four" / "config.json").read_text())["workers"] == 4
    assert done.stdout.count("\n") == 3 and done.stderr == ""  # rank 0 alone speaks: the evaluations (--quiet)


@needs_mpi
def test_muon_shared_out_over_ranks_trains_as_one_process(text_file, tmp_path):
    """Muon's orthogonalizations shared out over 2 and 3 ranks (each its share of every stack,
    summed by one Allreduce): the losses and weights of one process, within float32 rounding."""
    args = ["--data", text_file, "--max-iters", "12", "--eval-interval", "6", "--optimizer", "muon", "--rotary",
            "--muon-weight-decay", "0.1", *TINY]
    runs = {"one": train_run(*args, "--out-dir", tmp_path / "one", "--workers", 1),
            "two": train_run(*args, "--out-dir", tmp_path / "two", "--workers", 2),
            "three": mpiexec_run(3, *args, "--out-dir", tmp_path / "three")}
    for name, done in runs.items():
        assert done.returncode == 0, (name, done.stderr)
    one = weights(tmp_path / "one")
    for name in ("two", "three"):
        np.testing.assert_allclose(losses(tmp_path / name), losses(tmp_path / "one"), rtol=2e-6, err_msg=name)
        for key, value in weights(tmp_path / name).items():
            np.testing.assert_allclose(value, one[key], rtol=1e-4, atol=1e-6, err_msg=f"{name}: {key}")


@needs_mpi
def test_a_run_resumes_on_another_number_of_ranks(text_file, tmp_path):
    args = ["--data", text_file, "--eval-interval", "5", *TINY]
    assert train_run(*args, "--out-dir", tmp_path / "whole", "--max-iters", 10, "--workers", 1).returncode == 0
    assert train_run(*args, "--out-dir", tmp_path / "parts", "--max-iters", 5, "--workers", 2).returncode == 0
    resumed = mpiexec_run(3, "--out-dir", tmp_path / "parts", "--resume", "--max-iters", 10)
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_allclose(losses(tmp_path / "parts"), losses(tmp_path / "whole"), rtol=2e-6)
    assert json.loads((tmp_path / "parts" / "config.json").read_text())["workers"] == 3


@needs_mpi
def test_dropout_draws_a_stream_per_step_and_rank_that_a_resumed_run_draws_again(text_file, tmp_path):
    args = ["--data", text_file, "--eval-interval", "4", *TINY, "--dropout", "0.5", "--workers", 2]
    assert train_run(*args, "--out-dir", tmp_path / "whole", "--max-iters", 8).returncode == 0
    assert train_run(*args, "--out-dir", tmp_path / "parts", "--max-iters", 4).returncode == 0
    assert train_run(*args, "--out-dir", tmp_path / "parts", "--max-iters", 8, "--resume").returncode == 0
    assert losses(tmp_path / "parts") == losses(tmp_path / "whole")
    assert train.dropout_seed(1337, 4, 0) != train.dropout_seed(1337, 4, 1) != train.dropout_seed(1337, 5, 1)


@needs_mpi
@pytest.mark.parametrize("flags, message", [
    (["--workers", "3"], "--workers 3 asks for 3 processes, and mpiexec started 2: leave --workers out under mpiexec"),
    (["--batch-size", "1"], "2 processes cannot share batches of 1: each needs a sequence at least"),
    (["--n-embd", "15"], "n_embd (15) must be divisible by n_head (2)"),
    (["--resume"], "no checkpoint at"),
])
def test_a_refusal_is_one_line_from_rank_0(text_file, tmp_path, flags, message):
    done = mpiexec_run(2, "--data", text_file, "--out-dir", tmp_path / "run", *TINY, *flags)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and message in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "run" / "ckpt.npz").exists()


@needs_mpi
def test_a_bad_data_file_or_out_dir_is_one_line_before_any_rank_trains(tmp_path):
    (tmp_path / "a_file").write_text("")
    for data, out, message in [(tmp_path / "missing.txt", tmp_path / "run", "not found"),
                               (tmp_path / "a_file", tmp_path / "run", "is empty"),
                               (REPO / "data" / "tinyshakespeare" / "input.txt", tmp_path / "a_file", "is a file")]:
        if not data.exists() and data.name == "input.txt":
            continue  # (the corpus is not here)
        done = mpiexec_run(2, "--data", data, "--out-dir", out, *TINY)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert done.stderr.startswith("error: ") and message in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


# ---- faults ------------------------------------------------------------------------------------

def faulty_run(tmp_path: Path, text_file: Path, kind: str) -> tuple[int, str, float]:
    """Two ranks started as gpt.train starts them, the last one failing at its 5th step (after
    the evaluation at step 3 saved a checkpoint): (exit status, stderr, seconds)."""
    command = [sys.executable, str(FAULTS), kind, "5", "--data", str(text_file), "--out-dir", str(tmp_path / "run"),
               "--max-iters", "1000", "--eval-interval", "3", *TINY]
    started = time.perf_counter()
    done = subprocess.run([MPIEXEC, "-n", "2", *command], cwd=REPO, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr, time.perf_counter() - started


def resumes(tmp_path: Path, step: int) -> bool:
    """Whether the run's checkpoint is at `step` and resumes. mpiexec can return while the
    aborted job's rank 0 is still being torn down, holding the out dir's lock: its pid is
    waited for first (a few seconds at most), as a user would find it gone a moment later."""
    wait_for_exit(int((tmp_path / "run" / LOCK_NAME).read_text() or 0))
    _, meta = load_checkpoint(tmp_path / "run" / "ckpt.npz")
    return meta["step"] == step and train.main(["--out-dir", str(tmp_path / "run"), "--resume", "--max-iters",
                                                str(step + 1), "--workers", "1", "--quiet"]) == 0


def wait_for_exit(pid: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


@needs_mpi
@pytest.mark.slow
def test_a_rank_killed_ends_the_job_and_the_checkpoint_resumes(text_file, tmp_path):
    """kill -9 of one rank, as the system's out-of-memory killer does: mpiexec ends the others
    (and says so in its own words, passed on as they are)."""
    status, err, seconds = faulty_run(tmp_path, text_file, "kill")
    assert status != 0 and seconds < 30 and "Traceback" not in err
    assert resumes(tmp_path, 3)


@needs_mpi
def test_a_rank_that_runs_out_of_memory_ends_the_job_from_there(text_file, tmp_path):
    """A failure on one rank alone: it says so, and ends every rank (MPI_Abort, whose own line MPICH adds)."""
    status, err, _ = faulty_run(tmp_path, text_file, "memory")
    assert status == 2 and err.startswith(
        "error: out of memory (Unable to allocate 1.00 TiB for an array); try smaller sizes (rank 1 of 2)\n")
    assert "Traceback" not in err and resumes(tmp_path, 3)


@needs_mpi
def test_a_loss_that_is_nan_on_one_rank_stops_them_all_in_one_line(text_file, tmp_path):
    """One rank's share of the loss is nan: the sum that every rank gets is nan, so all stop together."""
    status, err, _ = faulty_run(tmp_path, text_file, "nan")
    assert status == 2 and err.startswith("error: the loss became nan at step 4; the last good checkpoint is ")
    assert err.count("\n") == 1 and resumes(tmp_path, 3)


SCHEDULE = ["--eval-interval", "1000", "--lr-decay-iters", "100000"]  # (the same learning rates, however long the run)


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("during", ["training", "evaluation"])
def test_ctrl_c_saves_once_and_every_rank_exits_130_in_one_line(text_file, tmp_path, during):
    """Ctrl-C to the trainer, which passes it on to mpiexec, which passes it on to every rank:
    they stop together at the end of a step, or at once in an evaluation (seen on the
    progress bar), and rank 0 saves and says so. Resumed, the run reaches the weights of a run
    that was never stopped."""
    out = tmp_path / "run"
    flags = ["--eval-iters", "20"] if during == "training" else ["--eval-iters", "40000", "--no-quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "gpt.train", "--data", str(text_file), "--out-dir", str(out),
                             "--max-iters", "100000", *SCHEDULE, *TINY, *flags, "--workers", "2"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, TERMINAL_COLUMNS: "80"})
    shown, deadline = "", time.time() + 120
    while not ((out / "ckpt.npz").exists() if during == "training" else "evaluating train loss: batch" in shown):
        assert time.time() < deadline and proc.poll() is None, shown[-300:]
        if during == "evaluation" and select.select([proc.stderr], [], [], 1)[0]:
            shown += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    sent = time.perf_counter()
    stdout, stderr = proc.communicate(timeout=60)
    assert time.perf_counter() - sent < 10
    assert proc.returncode == 130 and "Traceback" not in stderr and stderr.count("interrupted") == 1, stderr
    step = load_checkpoint(out / "ckpt.npz")[1]["step"]
    last_line = stderr.strip().split("\n")[-1]
    assert last_line.startswith(f"interrupted: saved step {step} to ") and (step > 0) == (during == "training")
    if during == "training":
        assert stderr.count("\n") == 1
    # (the evaluations change no weight: a short one will do)
    assert train_run("--out-dir", out, "--resume", "--max-iters", step + 5, "--eval-iters", 2,
                     "--workers", 2).returncode == 0
    assert read_metrics(out)[-1]["step"] == step + 5
    never_stopped = tmp_path / "never_stopped"
    assert train_run("--data", text_file, "--out-dir", never_stopped, "--max-iters", step + 5, *SCHEDULE, *TINY,
                     "--eval-iters", 2, "--workers", 2).returncode == 0
    for name, value in weights(never_stopped).items():
        np.testing.assert_array_equal(weights(out)[name], value, err_msg=name)


def test_a_world_of_one_does_not_import_mpi():
    """Nor does a process that no MPI launcher started: gpt.train without mpiexec."""
    assert distributed.world().size == 1 and "mpi4py.MPI" not in sys.modules
