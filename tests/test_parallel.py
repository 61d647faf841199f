"""Data parallelism over processes: the same loss and gradients as one process, in a
repeatable order, and a clean stop whatever goes wrong."""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import threading
import time
import types

import numpy as np
import pytest

import nanograd
from gpt import run, train
from gpt.model import GPT, GPTConfig
from gpt.run import TrainConfig
from nanograd import backend, no_grad, optim
from nanograd import parallel as parallel_module
from nanograd.parallel import DataParallel

TINY = dict(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8)
FAILING_ID = 10  # a slice whose first token is this fails in failing_loss


def tiny_gpt(**overrides) -> GPT:
    nanograd.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **overrides}))


def batch(b: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, FAILING_ID, (b, 6)), rng.integers(0, 11, (b, 6))


# The loss functions travel to the worker processes, so they live at module level.
def loss_of(model, x, y):
    return model(x, y)[1]


def logits_sum(model, x):
    return model(x)[0].sum()


def failing_loss(model, x, y):
    if x[0, 0] == FAILING_ID:
        raise RuntimeError("this slice failed")
    return loss_of(model, x, y)


def memory_hungry_loss(model, x, y):
    if x[0, 0] == FAILING_ID:
        raise MemoryError("Unable to allocate 1.00 TiB")
    return loss_of(model, x, y)


def overflowing_loss(model, x, y):
    if x[0, 0] == FAILING_ID:
        np.full(2, 3e38, np.float32) * np.float32(10)  # overflows to inf: warns, raises or not, by np.geterr()
    return loss_of(model, x, y)


def slow_loss(model, x, y):
    time.sleep(0.2)
    return loss_of(model, x, y)


def grad_mode(model, x, y):
    """1 where the slice ran recording a graph, 0 under no_grad."""
    return nanograd.Tensor(float(nanograd.is_grad_enabled()))


def hanging_loss(model, x, y):
    if x[0, 0] == FAILING_ID:
        time.sleep(60)  # a worker stuck (sent only to the worker)
    return loss_of(model, x, y)


def exiting_loss(model, x, y):
    if x[0, 0] == FAILING_ID:
        os._exit(3)  # a process that dies mid-slice (sent only to the worker)
    return loss_of(model, x, y)


def absent_in_workers(obj):
    """obj, made to live in a module that exists in this process only: it pickles here, and a
    worker process fails to import it."""
    module = sys.modules.setdefault("only_in_the_test_process", types.ModuleType("only_in_the_test_process"))
    obj.__module__ = module.__name__
    setattr(module, obj.__qualname__, obj)
    return obj


@absent_in_workers
def unimportable_loss(model, x, y):
    return loss_of(model, x, y)


@absent_in_workers
class UnimportableGPT(GPT):
    pass


def shared_memory_blocks() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.fixture
def two_workers():
    """A tiny GPT and a DataParallel over it with 2 workers, closed afterwards."""
    model = tiny_gpt()
    parallel = DataParallel(model, 2)
    yield model, parallel
    parallel.close()


def loss_and_grads(parallel: DataParallel, x, y) -> tuple[float, list[np.ndarray]]:
    parallel.model.zero_grad()
    loss = parallel.loss(loss_of, x, y, backward=True)
    return loss, [p.grad.copy() for p in parallel.model.parameters()]


@pytest.mark.parametrize("workers, b", [(2, 4), (3, 5), (4, 2)], ids=["even", "uneven", "more-workers-than-rows"])
def test_several_workers_give_the_loss_and_gradients_of_one(workers, b):
    model, (x, y) = tiny_gpt(), batch(b)
    loss_one, grads_one = loss_and_grads(DataParallel(model, 1), x, y)
    parallel = DataParallel(model, workers)
    loss_many, grads_many = loss_and_grads(parallel, x, y)
    parallel.close()
    np.testing.assert_allclose(loss_many, loss_one, rtol=1e-6)
    for (name, _), one, many in zip(model.named_parameters(), grads_one, grads_many):
        np.testing.assert_allclose(many, one, rtol=1e-4, atol=1e-6, err_msg=name)


def test_the_result_repeats_exactly(two_workers):
    _, parallel = two_workers
    x, y = batch(4)
    first, second = loss_and_grads(parallel, x, y), loss_and_grads(parallel, x, y)
    assert first[0] == second[0]
    for a, b in zip(first[1], second[1]):
        np.testing.assert_array_equal(a, b)


def test_gradients_add_to_what_is_already_there(two_workers):
    model, parallel = two_workers
    x, y = batch(4)
    _, grads = loss_and_grads(parallel, x, y)
    parallel.loss(loss_of, x, y, backward=True)  # a second time, without zero_grad
    for p, g in zip(model.parameters(), grads):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-6)


def test_workers_follow_the_optimizer_and_the_mode():
    """AdamW swaps the weights for views of its flat buffer and updates them, and eval() turns
    dropout off: the workers must see both."""
    model, (x, y) = tiny_gpt(dropout=0.5), batch(4)
    parallel = DataParallel(model, 2)
    opt = optim.AdamW(model.parameters(), lr=0.1)
    parallel.loss(loss_of, x, y, backward=True)
    opt.step()
    model.eval()
    with no_grad():
        np.testing.assert_allclose(parallel.loss(loss_of, x, y), loss_of(model, x, y).item(), rtol=1e-6)
    parallel.close()


def trained(share: bool, workers: int, steps: int = 3) -> tuple[GPT, optim.AdamW, float]:
    """A tiny GPT after `steps` AdamW steps on `workers` processes, the optimizer's update
    shared out between them (given to DataParallel) or run by this process alone; and the
    loss that they all compute with the new weights afterwards. Two parameter groups (decay,
    no decay); the position table outside the optimizer, changed by this process at each step
    (its weights are copied to the workers); one weight without a gradient at each step."""
    model = tiny_gpt()
    position_table, without_grad = model.transformer.wpe.weight, model.transformer.h[0].mlp.c_fc.weight
    groups = [{**g, "params": [p for p in g["params"] if p is not position_table]}
              for g in run.parameter_groups(model, 0.1)]
    opt = optim.AdamW(groups, lr=0.1)
    with DataParallel(model, workers, opt if share else None) as parallel:
        for i in range(steps):
            opt.zero_grad()
            parallel.loss(loss_of, *batch(6, seed=i), backward=True)
            without_grad.grad = None
            position_table.data[...] *= 0.5
            parallel.step(opt)
        loss = parallel.loss(loss_of, *batch(6, seed=steps))
    return model, opt, loss


@pytest.mark.parametrize("workers", [2, 3])
def test_a_shared_optimizer_step_gives_the_numbers_of_one_process(monkeypatch, workers):
    """Each process updates a part of the flat buffers (here this one piece 0 of `workers`):
    weights, moments and the next loss are bit for bit those of this process updating
    everything, and they are still there (back in private memory) once the workers are closed."""
    model_alone, opt_alone, loss_alone = trained(share=False, workers=workers)
    pieces = []
    update = optim.adamw_update
    monkeypatch.setattr(optim, "adamw_update", lambda *a: (pieces.append(a[2:]), update(*a)))
    model, opt, loss = trained(share=True, workers=workers)
    assert set(pieces) == {(0, workers)}
    assert loss == loss_alone
    for p, q in zip(model.parameters(), model_alone.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    for (name, a), b in zip(opt.state_dict().items(), opt_alone.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    for _, flat in opt.flat:
        assert all(np.shares_memory(p.data, flat.data) for p in flat.params)
    model.zero_grad()
    loss_of(model, *batch(4)).backward()
    opt.step()  # the optimizer goes on after close


def test_a_replaced_weight_array_is_refused():
    """The workers view the optimizer's weights in shared memory: an array swapped in for one
    would silently part the processes' models, so the next call refuses."""
    model = tiny_gpt()
    opt = optim.AdamW(model.parameters(), lr=0.1)
    with DataParallel(model, 2, opt) as parallel:
        p = model.parameters()[0]
        p.data = p.data.copy()
        with pytest.raises(RuntimeError, match=r"p\.data\[\.\.\.\]"):
            parallel.loss(loss_of, *batch(4))


def test_a_weight_replaced_before_the_workers_start_is_kept():
    model = tiny_gpt()
    opt = optim.AdamW(model.parameters(), lr=0.1)
    p = model.parameters()[0]
    p.data = np.full(p.shape, 0.5, np.float32)  # after the optimizer, before DataParallel
    with DataParallel(model, 2, opt):
        assert (p.data == 0.5).all()


def test_a_worker_that_dies_before_the_shared_update_is_reported():
    """The step is then half done, but a parameter without a gradient is still left alone."""
    model = tiny_gpt()
    opt = optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    without_grad = model.parameters()[0]
    before = without_grad.data.copy()
    with DataParallel(model, 2, opt) as parallel:
        parallel.loss(loss_of, *batch(4), backward=True)
        without_grad.grad = None
        parallel._pool.kill()
        with pytest.raises(RuntimeError, match="worker 1.*stopped.*killed, as when the system runs out of memory"):
            parallel.step(opt)
    np.testing.assert_array_equal(without_grad.data, before)


def test_arrays_taken_while_the_workers_run_stay_readable_after_close():
    """A weight from p.numpy() or a moment from state_dict() is a view of shared memory while
    the workers run; closing must not pull the memory from under it (that would crash)."""
    model = tiny_gpt()
    opt = optim.AdamW(model.parameters(), lr=0.1)
    with DataParallel(model, 2, opt) as parallel:
        parallel.loss(loss_of, *batch(4), backward=True)
        parallel.step(opt)
        weight, moment = model.parameters()[0].numpy(), opt.state_dict()["group0.m"]
        expected = weight.copy(), moment.copy()
    np.testing.assert_array_equal(weight, expected[0])
    np.testing.assert_array_equal(moment, expected[1])


def test_one_optimizer_is_shared_by_one_data_parallel_at_a_time():
    model = tiny_gpt()
    opt = optim.AdamW(model.parameters(), lr=0.1)
    with DataParallel(model, 2, opt):
        with pytest.raises(ValueError, match="already shared"):
            DataParallel(model, 2, opt)
    with DataParallel(model, 2, opt):  # once the first is closed
        pass
    with pytest.raises(TypeError, match="AdamW"):
        DataParallel(model, 2, optim.SGD(model.parameters()))


def test_dropout_draws_a_seeded_stream_per_slice():
    """Each slice's dropout stream is seeded from nanograd's CPU generator: the total is the mean
    of the two slices' losses, each computed here with its own seed, and the masks differ."""
    model = tiny_gpt(dropout=0.5)
    x = np.tile(batch(1)[0], (2, 1))  # two identical rows: only their dropout masks can differ
    parallel = DataParallel(model, 2)
    nanograd.manual_seed(1)
    total = parallel.loss(logits_sum, x)
    nanograd.manual_seed(1)
    seeds = backend.generator("cpu").integers(2**63, size=2)
    with no_grad():
        each = [parallel_module._run_task(model, parallel_module._Task(
                    logits_sum, (x[i:i + 1],), seed, share=0.5, backward=False, training=True,
                    requires_grad=[True] * len(model.parameters()), grad_enabled=False, float_errors=np.geterr()))
                for i, seed in enumerate(seeds)]
    assert each[0] != each[1]
    np.testing.assert_allclose(total, sum(each), rtol=1e-6)
    nanograd.manual_seed(2)
    assert parallel.loss(logits_sum, x) != total
    parallel.close()


@pytest.mark.parametrize("failing_slice", [0, 1], ids=["this-process", "worker"])
def test_a_failing_slice_raises_and_the_next_call_still_works(two_workers, failing_slice):
    """The error comes out of loss() after every worker has answered, so the next call is not
    handed a stale answer."""
    _, parallel = two_workers
    x, y = batch(4)
    expected = loss_and_grads(parallel, x, y)[0]
    bad = x.copy()
    bad[2 * failing_slice, 0] = FAILING_ID
    with pytest.raises(RuntimeError, match="this slice failed"):
        parallel.loss(failing_loss, bad, y, backward=True)
    assert loss_and_grads(parallel, x, y)[0] == expected


def test_workers_follow_the_callers_numpy_error_settings(two_workers):
    """An overflow in a worker's slice does what it would do in the caller: the trainer, which
    checks its losses itself, silences NumPy's warnings, and its workers must not print them."""
    _, parallel = two_workers
    x, y = batch(4)
    x[2, 0] = FAILING_ID  # the worker's slice overflows
    with np.errstate(over="raise"), pytest.raises(RuntimeError, match="worker 1: FloatingPointError"):
        parallel.loss(overflowing_loss, x, y)
    with np.errstate(over="ignore"):
        assert np.isfinite(parallel.loss(overflowing_loss, x, y))


@pytest.mark.parametrize("failing_slice", [0, 1], ids=["this-process", "worker"])
def test_running_out_of_memory_in_a_worker_is_a_memory_error_here(two_workers, failing_slice):
    """So that the trainer reports it in one line (gpt.errors.exit_status), wherever it
    happened; other failures in a worker stay RuntimeErrors, with the worker's message."""
    _, parallel = two_workers
    x, y = batch(4)
    bad = x.copy()
    bad[2 * failing_slice, 0] = FAILING_ID
    with pytest.raises(MemoryError, match="1.00 TiB"):
        parallel.loss(memory_hungry_loss, bad, y, backward=True)
    assert np.isfinite(parallel.loss(loss_of, x, y, backward=True))


def test_a_loss_function_that_cannot_be_sent_says_why(two_workers):
    _, parallel = two_workers
    with pytest.raises(RuntimeError, match="can import"):
        parallel.loss(lambda model, x, y: loss_of(model, x, y), *batch(4))


def test_a_loss_function_a_worker_cannot_import_says_why(two_workers):
    _, parallel = two_workers
    x, y = batch(4)
    with pytest.raises(RuntimeError, match="only_in_the_test_process"):
        parallel.loss(unimportable_loss, x, y)
    assert parallel.loss(loss_of, x, y) == pytest.approx(loss_of(parallel.model, x, y).item(), rel=1e-6)


def test_a_failed_call_leaves_the_gradients_as_they_were(two_workers):
    model, parallel = two_workers
    x, y = batch(4)
    parallel.loss(loss_of, x, y, backward=True)
    before = [p.grad.copy() for p in model.parameters()]
    bad = x.copy()
    bad[2, 0] = FAILING_ID  # the worker's slice fails after this process's slice has run
    with pytest.raises(RuntimeError, match="this slice failed"):
        parallel.loss(failing_loss, bad, y, backward=True)
    for p, grad in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.grad, grad)


def test_a_model_that_cannot_be_sent_leaves_nothing_behind():
    """Nor does it take the optimizer's buffers with it: they are back in private memory."""
    model = tiny_gpt()
    opt = optim.AdamW(model.parameters(), lr=0.1)
    weights = [p.data.copy() for p in model.parameters()]
    model.note = lambda: None  # a lambda cannot be pickled
    blocks = shared_memory_blocks()
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        DataParallel(model, 2, opt)
    assert shared_memory_blocks() == blocks
    flat = opt.flat[0][1]
    for p, w in zip(model.parameters(), weights):
        np.testing.assert_array_equal(p.data, w)
        assert np.shares_memory(p.data, flat.data)


def test_a_worker_that_cannot_start_is_reported_at_once(capfd):
    nanograd.manual_seed(0)
    model = UnimportableGPT(GPTConfig(**TINY))
    blocks = shared_memory_blocks()
    with pytest.raises(RuntimeError, match="could not start"):
        DataParallel(model, 2)
    assert shared_memory_blocks() == blocks
    capfd.readouterr()  # the worker's own traceback


def test_too_little_shared_memory_is_refused_before_anything_starts(monkeypatch):
    """Writing past the end of /dev/shm would kill the program (SIGBUS): refuse up front."""
    monkeypatch.setattr(parallel_module.os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=1, f_frsize=4096))
    with pytest.raises(parallel_module.SharedMemoryTooSmall, match="MiB free"):
        DataParallel(tiny_gpt(), 2)


def train_tiny_on_two_workers(tmp_path) -> int:
    """The trainer on a tiny model for 2 steps, asked for 2 workers: the workers it used."""
    text = tmp_path / "poem.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    out = tmp_path / "run"
    assert train.main(["--data", str(text), "--out-dir", str(out), "--workers", "2", "--max-iters", "2",
                       "--eval-iters", "1", "--n-layer", "1", "--n-embd", "8", "--n-head", "2",
                       "--block-size", "8", "--batch-size", "4", "--sample-tokens", "0", "--quiet"]) == 0
    return json.loads((out / "config.json").read_text())["workers"]


def test_the_trainer_falls_back_to_one_process_without_shared_memory(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(parallel_module.os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=1, f_frsize=4096))
    assert train_tiny_on_two_workers(tmp_path) == 1
    assert "training in one process" in capsys.readouterr().out


def test_the_trainer_keeps_two_processes_without_room_for_the_optimizer(tmp_path, monkeypatch, capsys):
    """The optimizer's buffers need the most shared memory: without room for them, the
    processes still share the forward and backward, and the step runs in this one."""
    def no_room_for_an_optimizer(model, workers, optimizer=None):
        if optimizer is not None:
            raise parallel_module.SharedMemoryTooSmall("no room for the optimizer")
        return DataParallel(model, workers)

    monkeypatch.setattr(train, "DataParallel", no_room_for_an_optimizer)
    assert train_tiny_on_two_workers(tmp_path) == 2
    assert "training in one process" not in capsys.readouterr().out


def test_ctrl_c_does_not_reach_the_workers(two_workers):
    """A terminal's Ctrl-C goes to every process of the program; the workers ignore it (the
    caller decides), from the moment they start."""
    _, parallel = two_workers
    for pid in parallel.worker_pids:
        os.kill(pid, signal.SIGINT)
    time.sleep(0.2)
    x, y = batch(4)
    assert parallel.loss(loss_of, x, y) == pytest.approx(loss_of(parallel.model, x, y).item(), rel=1e-6)


def test_a_second_ctrl_c_stops_a_hung_worker(two_workers, monkeypatch):
    _, parallel = two_workers
    x, y = batch(4)
    x[2, 0] = FAILING_ID
    monkeypatch.setattr(parallel_module, "wait", lambda futures: (_ for _ in ()).throw(KeyboardInterrupt))
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        parallel.loss(hanging_loss, x, y)
    assert time.perf_counter() - start < 10
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="stopped"):  # the workers were stopped
        parallel.loss(loss_of, *batch(4))


def test_a_worker_that_dies_is_reported(two_workers):
    _, parallel = two_workers
    x, y = batch(4)
    x[2, 0] = FAILING_ID  # the first row of the worker's slice
    with pytest.raises(RuntimeError, match="stopped"):
        parallel.loss(exiting_loss, x, y)
    with pytest.raises(RuntimeError, match="stopped"):  # and every call after it
        parallel.loss(loss_of, *batch(4))


def test_the_workers_record_no_graph_under_no_grad(two_workers):
    """Evaluation runs under no_grad: the workers must not build (and keep) a graph either."""
    _, parallel = two_workers
    assert parallel.loss(grad_mode, *batch(4)) == 1.0
    with no_grad():
        assert parallel.loss(grad_mode, *batch(4)) == 0.0


def test_a_parameter_frozen_later_gets_no_gradient(two_workers):
    model, parallel = two_workers
    frozen = model.transformer.wpe.weight
    frozen.requires_grad = False
    parallel.loss(loss_of, *batch(4), backward=True)
    assert frozen.grad is None and model.transformer.wte.weight.grad is not None


def test_close_stops_the_workers_and_frees_the_shared_memory():
    model = tiny_gpt()
    parallel = DataParallel(model, 2, optim.AdamW(model.parameters()))
    pool = parallel._pool
    blocks = [shared.block.name for shared in [pool.weights, *pool.gradients, *pool.flat_blocks]]
    assert len(blocks) == 3  # the weights, the worker's gradients, the optimizer's flat group
    processes = parallel._pool.processes
    parallel.close()
    assert not any(p.is_alive() for p in processes)
    if os.path.isdir("/dev/shm"):  # Linux: where named shared memory lives
        assert not any(os.path.exists(f"/dev/shm/{name}") for name in blocks)
    parallel.close()  # a second time does nothing


def test_at_least_one_worker():
    with pytest.raises(ValueError, match="at least 1"):
        DataParallel(tiny_gpt(), 0)


def test_ctrl_c_while_waiting_lets_the_workers_finish_then_raises(two_workers, monkeypatch):
    """A Ctrl-C in the caller does not cut the step short: every worker answers first, and
    the next call works."""
    _, parallel = two_workers
    x, y = batch(4)
    expected = loss_and_grads(parallel, x, y)[0]
    real_wait, calls = parallel_module.wait, []

    def interrupted_once(futures):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as if Ctrl-C arrived while the worker was running
        return real_wait(futures)

    monkeypatch.setattr(parallel_module, "wait", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        parallel.loss(slow_loss, x, y, backward=True)
    assert len(calls) == 2
    assert loss_and_grads(parallel, x, y)[0] == expected


def test_a_thread_generator_is_seen_by_its_own_thread_only():
    mine = np.random.default_rng(0)
    seen = {}
    with backend.thread_generator(mine):
        other = threading.Thread(target=lambda: seen.update(other=backend.generator("cpu")))
        other.start()
        other.join()
        assert backend.generator("cpu") is mine
    assert seen["other"] is not mine and backend.generator("cpu") is not mine


def test_thread_generators_nest():
    outer, inner = np.random.default_rng(0), np.random.default_rng(1)
    with backend.thread_generator(outer):
        with backend.thread_generator(inner):
            assert backend.generator("cpu") is inner
        assert backend.generator("cpu") is outer


@pytest.mark.parametrize("fields, expected", [
    (dict(), 2),  # the baby preset's sizes
    (dict(workers=3), 3),
    (dict(workers=3, batch_size=2), 2),  # a worker per slice, at most
    (dict(workers=3, device="cuda"), 1),
    (dict(model="bigram"), 1),
    (dict(n_embd=8, n_head=2, batch_size=4, block_size=8), 1),  # too small a step to share
    (dict(batch_size=4, block_size=16), 1),  # 4K activations per worker: too few
    (dict(batch_size=4, block_size=32), 2),  # 8K: enough
    (dict(batch_size=3, block_size=256), 2),  # 2 + 1 sequences beat one process
])
def test_data_parallel_workers(monkeypatch, fields, expected):
    monkeypatch.setattr(run, "default_workers", lambda: 2)  # as on a 2-core machine
    assert TrainConfig(**fields).data_parallel_workers() == expected


def test_data_parallel_workers_leave_no_slice_much_larger_than_the_rest(monkeypatch):
    """5 sequences on 4 cores would be 2 + 1 + 1 + 1: the step waits for the 2 as long as on 3
    processes (2 + 2 + 1), which is what it gets."""
    monkeypatch.setattr(run, "default_workers", lambda: 4)
    assert TrainConfig(batch_size=5, block_size=256).data_parallel_workers() == 3


def test_training_with_two_workers_matches_one(tmp_path):
    """The trainer end to end: one or two processes, the same losses within float32 rounding."""
    text = tmp_path / "poem.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    losses = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        assert train.main(["--data", str(text), "--out-dir", str(out), "--workers", str(workers), "--max-iters", "6",
                           "--eval-interval", "3", "--eval-iters", "2", "--n-layer", "2", "--n-head", "2",
                           "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--sample-tokens", "0",
                           "--quiet"]) == 0
        losses[workers] = [json.loads(row)["val_loss"] for row in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses[1]) == 3
    np.testing.assert_allclose(losses[2], losses[1], rtol=1e-5)


def test_evaluation_in_groups_of_batches_gives_the_mean_of_every_batch():
    model = tiny_gpt()
    batches = [batch(3, seed=i) for i in range(5)]  # with 2 workers: groups of 4 and 1 batches
    with no_grad():
        expected = np.mean([loss_of(model, x, y).item() for x, y in batches])
    parallel = DataParallel(model, 2)
    got = train.estimate_loss(parallel, batches, "cpu")
    parallel.close()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert model.training  # back in training mode afterwards
