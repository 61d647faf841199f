"""Data parallelism over threads: the same loss and gradients as one thread, in a repeatable order."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

import nanograd
from gpt import run, train
from gpt.model import GPT, GPTConfig
from gpt.run import TrainConfig
from nanograd import backend, no_grad, optim
from nanograd.parallel import DataParallel

TINY = dict(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8)


def tiny_gpt(**overrides) -> GPT:
    nanograd.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **overrides}))


def batch(b: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (b, 6)), rng.integers(0, 11, (b, 6))


def loss_of(model, x, y):
    return model(x, y)[1]


def loss_and_grads(model, workers: int, x, y) -> tuple[float, list[np.ndarray]]:
    model.zero_grad()
    loss = DataParallel(model, workers).loss(loss_of, x, y, backward=True)
    return loss, [p.grad.copy() for p in model.parameters()]


@pytest.mark.parametrize("workers, b", [(2, 4), (3, 5), (4, 2)], ids=["even", "uneven", "more-workers-than-rows"])
def test_several_workers_give_the_loss_and_gradients_of_one(workers, b):
    model, (x, y) = tiny_gpt(), batch(b)
    loss_one, grads_one = loss_and_grads(model, 1, x, y)
    loss_many, grads_many = loss_and_grads(model, workers, x, y)
    np.testing.assert_allclose(loss_many, loss_one, rtol=1e-6)
    for (name, _), one, many in zip(model.named_parameters(), grads_one, grads_many):
        np.testing.assert_allclose(many, one, rtol=1e-4, atol=1e-6, err_msg=name)


def test_the_result_repeats_exactly():
    model, (x, y) = tiny_gpt(), batch(4)
    first, second = loss_and_grads(model, 2, x, y), loss_and_grads(model, 2, x, y)
    assert first[0] == second[0]
    for a, b in zip(first[1], second[1]):
        np.testing.assert_array_equal(a, b)


def test_gradients_add_to_what_is_already_there():
    model, (x, y) = tiny_gpt(), batch(4)
    _, grads = loss_and_grads(model, 2, x, y)
    DataParallel(model, 2).loss(loss_of, x, y, backward=True)  # a second time, without zero_grad
    for p, g in zip(model.parameters(), grads):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-6)


def test_replicas_follow_the_optimizer_and_the_mode():
    """AdamW swaps the weights for views of its flat buffer, and eval() turns dropout off: the
    workers must see both."""
    model, (x, y) = tiny_gpt(dropout=0.5), batch(4)
    parallel = DataParallel(model, 2)
    opt = optim.AdamW(model.parameters(), lr=0.1)
    parallel.loss(loss_of, x, y, backward=True)
    opt.step()
    model.eval()
    with no_grad():
        np.testing.assert_allclose(parallel.loss(loss_of, x, y), loss_of(model, x, y).item(), rtol=1e-6)


def test_dropout_is_seeded_and_differs_between_workers():
    model = tiny_gpt(dropout=0.5)
    x = np.tile(batch(1)[0], (2, 1))  # two identical rows: only their dropout masks can differ
    parallel = DataParallel(model, 2)

    def logits_per_row(seed: int) -> list[np.ndarray]:
        rows = {}

        def keep_logits(replica, xs):
            logits, _ = replica(xs)
            rows[id(replica)] = logits.numpy().copy()
            return logits.sum()

        nanograd.manual_seed(seed)
        parallel.loss(keep_logits, x)
        return [rows[id(replica)] for replica in parallel.replicas]

    first, again, other_seed = logits_per_row(1), logits_per_row(1), logits_per_row(2)
    assert len(first) == 2 and not np.array_equal(first[0], first[1])
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other_seed[0])


def test_a_failing_worker_raises_in_the_caller_after_the_others_finish():
    finished = []

    def first_fails(model, x):
        if x[0, 0] == first_id:
            raise RuntimeError("worker failed")
        time.sleep(0.2)  # still running when the first one fails
        finished.append(True)
        return model(x)[0].sum()

    x = batch(4)[0]
    first_id = x[0, 0]
    x[2:, 0] = (first_id + 1) % 11
    with pytest.raises(RuntimeError, match="worker failed"):
        DataParallel(tiny_gpt(), 2).loss(first_fails, x, backward=True)
    assert finished == [True]  # waited for: it cannot write gradients into a later step


def test_a_parameter_frozen_later_gets_no_gradient():
    model, (x, y) = tiny_gpt(), batch(4)
    parallel = DataParallel(model, 2)
    frozen = model.transformer.wpe.weight
    frozen.requires_grad = False
    parallel.loss(loss_of, x, y, backward=True)
    assert frozen.grad is None and model.transformer.wte.weight.grad is not None


def test_at_least_one_worker():
    with pytest.raises(ValueError, match="at least 1"):
        DataParallel(tiny_gpt(), 0)


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
    (dict(threads=3), 3),
    (dict(threads=3, batch_size=2), 2),  # a thread per slice, at most
    (dict(threads=3, device="cuda"), 1),
    (dict(model="bigram"), 1),
    (dict(n_embd=8, n_head=2, batch_size=4, block_size=8), 1),  # too small a step to share
    (dict(batch_size=3, block_size=256), 1),  # 2 + 1 sequences: the step waits for the 2
])
def test_worker_threads(monkeypatch, fields, expected):
    monkeypatch.setattr(run, "default_workers", lambda: 2)  # as on a 2-core machine
    assert TrainConfig(**fields).worker_threads() == expected


def test_training_with_two_threads_matches_one(tmp_path):
    """The trainer end to end: one or two threads, the same losses within float32 rounding."""
    text = tmp_path / "poem.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    losses = {}
    for threads in (1, 2):
        out = tmp_path / f"t{threads}"
        assert train.main(["--data", str(text), "--out-dir", str(out), "--threads", str(threads), "--max-iters", "6",
                           "--eval-interval", "3", "--eval-iters", "2", "--n-layer", "2", "--n-head", "2",
                           "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--sample-tokens", "0",
                           "--quiet"]) == 0
        losses[threads] = [json.loads(row)["val_loss"] for row in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses[1]) == 3
    np.testing.assert_allclose(losses[2], losses[1], rtol=1e-5)


def test_evaluation_in_groups_of_batches_gives_the_mean_of_every_batch():
    model = tiny_gpt()
    batches = [batch(3, seed=i) for i in range(5)]  # with 2 threads: groups of 4 and 1 batches
    with no_grad():
        expected = np.mean([loss_of(model, x, y).item() for x, y in batches])
    got = train.estimate_loss(DataParallel(model, 2), batches, "cpu")
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert model.training  # back in training mode afterwards


def test_ctrl_c_while_waiting_lets_the_workers_finish_then_raises(monkeypatch):
    import nanograd.parallel as parallel_module

    real_wait, calls, finished = parallel_module.wait, [], []

    def interrupted_once(futures):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as if Ctrl-C arrived while the workers were running
        return real_wait(futures)

    def slow_loss(model, x, y):
        time.sleep(0.1)
        loss = loss_of(model, x, y)
        finished.append(True)
        return loss

    monkeypatch.setattr(parallel_module, "wait", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        DataParallel(tiny_gpt(), 2).loss(slow_loss, *batch(4), backward=True)
    assert finished == [True, True] and len(calls) == 2
