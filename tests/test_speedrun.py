"""The speedrun's pieces (issue #26): rotary embeddings, the Muon optimizer, the last
evaluation over the whole val split, and the preset that puts them together."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import nanograd
from gpt import train
from gpt.checkpoint import load_checkpoint, load_run
from gpt.config import PRESETS
from gpt.data import CharDataset
from gpt.model import GPT, GPTConfig
from nanograd import Tensor, backend, gradcheck, optim
from nanograd import functional as F
from nanograd.distributed import World
from nanograd.ops.rotary import rotary_tables, rotate
from tests.test_benchmarks import import_benchmark

TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "2", "--sample-tokens", "0", "--quiet"]


def run_train(*args) -> int:
    return train.main([str(a) for a in args])


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def tiny_gpt(dtype=np.float64, **options) -> GPT:
    nanograd.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, **options))
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


# ---- rotary embeddings -----------------------------------------------------------------------

def test_rotary_attention_gradient_with_every_axis_of_its_own_size():
    B, T, nh, hs = 2, 5, 3, 4
    qkv = Tensor(np.random.default_rng(1).standard_normal((B, T, 3 * nh * hs)), requires_grad=True)
    assert gradcheck(lambda x: F.self_attention(x, nh, is_causal=True, rotary=True), qkv, atol=1e-6, rtol=1e-5)


def test_a_rotation_keeps_each_pairs_length_and_leaves_position_0_alone():
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 8))  # (B, nh, T, hs)
    cos, sin = rotary_tables(np, 6, 8, np.float64)
    y = rotate(x, cos, sin)
    pair_lengths = lambda a: a[..., :4] ** 2 + a[..., 4:] ** 2  # noqa: E731
    np.testing.assert_allclose(pair_lengths(y), pair_lengths(x), rtol=1e-12)
    np.testing.assert_array_equal(y[:, :, 0], x[:, :, 0])
    np.testing.assert_allclose(rotate(y, cos, sin, sign=-1), x, atol=1e-12)


def test_rotated_scores_depend_on_how_far_apart_two_positions_are_not_where():
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    cos, sin = rotary_tables(np, 12, 8, np.float64)
    at = lambda v, t: rotate(v[None], cos[t : t + 1], sin[t : t + 1])[0]  # noqa: E731 (v at position t)
    assert at(q, 5) @ at(k, 2) == pytest.approx(at(q, 9) @ at(k, 6), rel=1e-12)
    assert at(q, 5) @ at(k, 2) != pytest.approx(at(q, 5) @ at(k, 4), rel=1e-3)


def test_an_odd_head_size_cannot_be_rotated():
    with pytest.raises(Exception, match="must be even"):
        GPTConfig(n_embd=6, n_head=2, rotary=True)


def test_the_fused_rotary_attention_gives_the_lectures_computation_and_its_gradients():
    idx = np.random.default_rng(4).integers(0, 11, (3, 8))
    models = {fused: tiny_gpt(rotary=True, fused=fused) for fused in (True, False)}
    losses = {}
    for fused, model in models.items():
        _, loss = model(idx, idx)
        loss.backward()
        losses[fused] = loss.item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-12)
    assert "transformer.wpe.weight" not in dict(models[True].named_parameters())
    reference = dict(models[False].named_parameters())
    for name, p in models[True].named_parameters():
        np.testing.assert_allclose(p.grad, reference[name].grad, rtol=1e-9, atol=1e-12, err_msg=name)


def test_the_torch_twin_gives_the_same_rotary_loss():
    pytest.importorskip("torch")
    torch_gpt = import_benchmark("torch_gpt")
    model = tiny_gpt(np.float32, rotary=True)
    x = np.random.default_rng(6).integers(0, 11, (3, 8))
    torch_gpt.check_same_loss(model, torch_gpt.TorchGPT(model.config), x, np.roll(x, -1, axis=1), tol=1e-5)


# ---- Muon --------------------------------------------------------------------------------------

def numpy_muon(weights, grads_per_step, lr, momentum, weight_decay, steps=5):
    """Muon as its docstring writes it, one matrix at a time in float64, with the Newton-Schulz
    iteration of Keller Jordan's muon.py: the weights after each step's gradients."""
    a, b, c = 3.4445, -4.7750, 2.0315
    weights = [w.astype(np.float64).copy() for w in weights]
    buffers = [np.zeros_like(w) for w in weights]
    for grads in grads_per_step:
        for w, g, buf in zip(weights, grads, buffers):
            buf[...] = momentum * buf + (1 - momentum) * g
            u = momentum * buf + (1 - momentum) * g
            X = u.T if u.shape[0] > u.shape[1] else u
            X = X / max(np.linalg.norm(X), 1e-7)
            for _ in range(steps):
                A = X @ X.T
                X = a * X + (b * A + c * A @ A) @ X
            update = X.T if u.shape[0] > u.shape[1] else X
            w *= 1 - lr * weight_decay
            w -= lr * math.sqrt(max(1, w.shape[1] / w.shape[0])) * update
    return weights


SHAPES = [(4, 6), (4, 6), (6, 4), (5, 5), (3, 8)]  # two of one shape (a stack), tall, square, wide


def muon_case(seed=7, steps=3):
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(shape) for shape in SHAPES]
    grads = [[rng.standard_normal(shape) for shape in SHAPES] for _ in range(steps)]
    return weights, grads


def muon_steps(weights, grads, world=None, **options) -> list[np.ndarray]:
    params = [nanograd.nn.Parameter(w.copy()) for w in weights]
    opt = optim.Muon(params, world=world, **options)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        opt.step()
    return [p.data for p in params]


def test_muon_follows_its_update_rule():
    weights, grads = muon_case()
    options = dict(lr=0.05, momentum=0.9, weight_decay=0.1)
    for ours, expected, shape in zip(muon_steps(weights, grads, **options), numpy_muon(weights, grads, **options),
                                     SHAPES, strict=True):
        np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-12, err_msg=str(shape))


def test_orthogonalize_gives_every_singular_value_near_1():
    G = np.random.default_rng(8).standard_normal((3, 16, 48)) * np.array([1e-3, 1.0, 1e3])[:, None, None]
    singular_values = np.linalg.svd(optim.orthogonalize(G), compute_uv=False)
    assert singular_values.min() > 0.5 and singular_values.max() < 1.3


def test_muon_leaves_a_parameter_without_a_gradient_alone():
    weights, grads = muon_case(steps=1)
    grads[0][2] = None
    params = [nanograd.nn.Parameter(w.copy()) for w in weights]
    opt = optim.Muon(params, lr=0.1, weight_decay=0.5)
    for p, g in zip(params, grads[0]):
        p.grad = g
    opt.step()
    np.testing.assert_array_equal(params[2].data, weights[2])
    assert not np.allclose(params[0].data, weights[0])


class ShareOf(World):
    """Rank `rank` of `size`, without MPI: its all_sum gives back its own share (zeros elsewhere)."""

    def __init__(self, rank: int, size: int):
        super().__init__()
        self.rank, self.size = rank, size

    def all_sum(self, array):
        return array


@pytest.mark.parametrize("size", [2, 3])
def test_the_ranks_shares_of_muons_work_add_up_to_the_whole_update(size):
    """Without weight decay a step adds -lr * scale * orthogonalized update to each weight:
    what each rank adds from its own share (its all_sum returning the share alone) sums to
    the one-process step. (tests/test_distributed.py runs the same over MPI.)"""
    weights, grads = muon_case(steps=1)
    whole = muon_steps(weights, grads, lr=0.1)
    shares = [muon_steps(weights, grads, world=ShareOf(r, size), lr=0.1) for r in range(size)]
    for i, w in enumerate(weights):
        np.testing.assert_allclose(sum(share[i] - w for share in shares), whole[i] - w, rtol=1e-12, atol=1e-14)


def test_muon_matches_torch_optim_muon():
    """torch.optim.Muon runs Newton-Schulz in bfloat16 (8 bits of mantissa), nanograd in the
    weights' dtype: the updates agree to bfloat16's precision. A torch Linear weight is
    nanograd's transposed, and so is its update: the learning rate's shape factor is read off
    each one's own (in, out) or (out, in) shape."""
    torch = pytest.importorskip("torch")
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs PyTorch 2.9 or later")
    weights, grads = muon_case()
    options = dict(lr=0.05, momentum=0.9, weight_decay=0.1)
    ours = muon_steps(weights, grads, **options)
    theirs = [torch.nn.Parameter(torch.from_numpy(w.T.copy()).float()) for w in weights]
    opt = torch.optim.Muon(theirs, **options)
    for step_grads in grads:
        for p, g in zip(theirs, step_grads):
            p.grad = torch.from_numpy(g.T.copy()).float()
        opt.step()
    for w, mine, their, shape in zip(weights, ours, theirs, SHAPES, strict=True):
        moved, their_move = mine - w, their.detach().numpy().T - w
        assert np.abs(moved - their_move).max() < 0.02 * np.abs(moved).max(), shape


def test_muon_takes_matrices_only_and_its_state_round_trips():
    with pytest.raises(ValueError, match="2-D weights only"):
        optim.Muon([nanograd.nn.Parameter(np.ones(3))])
    weights, grads = muon_case(steps=2)
    params = [nanograd.nn.Parameter(w.copy()) for w in weights]
    opt = optim.Muon(params)
    for p, g in zip(params, grads[0]):
        p.grad = g
    opt.step()
    again = optim.Muon([nanograd.nn.Parameter(w.copy()) for w in weights])
    again.load_state_dict(opt.state_dict())
    for ours, theirs in zip(opt.buffers, again.buffers):
        np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(ValueError, match="muon.0"):
        again.load_state_dict({"muon.0": np.ones(2)})


def test_the_schedule_scales_each_optimizers_own_peak():
    p, q = nanograd.nn.Parameter(np.ones((2, 2))), nanograd.nn.Parameter(np.ones(2))
    both = optim.Optimizers(optim.AdamW([q], lr=1e-3), optim.Muon([p], lr=0.03))
    both.lr = 5e-4  # half of AdamW's peak
    assert both.optimizers[0].lr == 5e-4 and both.optimizers[1].lr == pytest.approx(0.015)


def test_make_optimizer_gives_muon_the_blocks_matrices_and_adamw_the_rest():
    model = tiny_gpt(np.float32)
    config = train.TrainConfig(optimizer="muon")
    adamw, muon = train.make_optimizer(model, config).optimizers
    names = {id(p): name for name, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in muon.params) == sorted(
        name for name, p in model.named_parameters() if name.startswith("transformer.h.") and p.ndim == 2)
    assert {names[id(p)] for p in adamw.params} == {name for name, p in model.named_parameters()
                                                     if id(p) not in {id(m) for m in muon.params}}
    assert "transformer.wte.weight" in {names[id(p)] for p in adamw.params}


# ---- training: resume, the whole val split, the preset --------------------------------------------

def test_a_muon_run_resumes_to_the_weights_of_one_run(text_file, tmp_path):
    common = ["--data", text_file, "--eval-interval", "4", "--optimizer", "muon", "--muon-weight-decay", "0.1",
              "--rotary", "--lr-decay-iters", "8", *TINY]
    assert run_train("--out-dir", tmp_path / "once", "--max-iters", "8", *common) == 0
    assert run_train("--out-dir", tmp_path / "twice", "--max-iters", "4", *common) == 0
    assert run_train("--out-dir", tmp_path / "twice", "--resume", "--max-iters", "8") == 0
    once, _ = load_checkpoint(tmp_path / "once" / "ckpt.npz")
    twice, _ = load_checkpoint(tmp_path / "twice" / "ckpt.npz")
    assert "optim.muon.0" in once and once.keys() == twice.keys()
    for name in once:
        np.testing.assert_array_equal(once[name], twice[name], err_msg=name)


def test_a_resumed_run_keeps_its_optimizer(text_file, tmp_path, capsys):
    assert run_train("--data", text_file, "--out-dir", tmp_path, "--max-iters", "2", *TINY) == 0
    assert run_train("--out-dir", tmp_path, "--resume", "--max-iters", "4", "--optimizer", "muon") == 2
    assert "optimizer='adamw' (flag: 'muon')" in capsys.readouterr().err


def test_muon_is_refused_for_the_bigram(text_file, tmp_path, capsys):
    assert run_train("--data", text_file, "--out-dir", tmp_path, "--preset", "bigram", "--optimizer", "muon") == 2
    assert capsys.readouterr().err.strip().endswith("the bigram has none (use adamw)")


def test_the_whole_split_batches_make_every_token_after_the_first_a_target_once():
    dataset = CharDataset("abcdefghij" * 10, val_fraction=0.45)  # val: 45 characters
    batches = dataset.whole_split_batches("val", batch_size=2, block_size=4)
    x = np.concatenate([bx for bx, _ in batches])
    y = np.concatenate([by for _, by in batches])
    assert [len(bx) for bx, _ in batches] == [2, 2, 2, 2, 2, 1]  # 11 chunks of 4: 44 of the 45 ids
    np.testing.assert_array_equal(y.reshape(-1), dataset.val[1:45])
    np.testing.assert_array_equal(x.reshape(-1), dataset.val[:44])


def test_the_last_evaluation_covers_the_whole_val_split(text_file, tmp_path):
    """--eval-all-val: the last row's val loss is the mean over every sequence of the whole
    val split (11 batches of 4 and one of 3 here), the earlier ones over the fixed batches."""
    out = tmp_path / "run"
    assert run_train("--data", text_file, "--out-dir", out, "--max-iters", "4", "--eval-interval", "2",
                     "--eval-all-val", *TINY) == 0
    saved = load_run(out / "ckpt.npz")
    dataset = CharDataset(text_file.read_text(), saved.tokenizer)
    batches = dataset.whole_split_batches("val", 4, 16)
    model = saved.model
    model.eval()
    with nanograd.no_grad():
        losses = [(model(x, y)[1].item(), len(x)) for x, y in batches]
    expected = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    rows = read_metrics(out)
    assert rows[-1]["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert rows[1]["val_loss"] != pytest.approx(rows[-1]["val_loss"], rel=1e-3)
    chars = saved.tokenizer.chars_per_token[np.concatenate([y.reshape(-1) for _, y in batches])].mean()
    assert rows[-1]["val_bpc"] == pytest.approx(expected / chars / math.log(2), rel=1e-6)


def test_the_speedrun_preset_trains_on_bpe_with_rotary_and_muon(text_file, tmp_path):
    assert set(PRESETS["speedrun"]) <= set(train.TrainConfig.__dataclass_fields__)
    out = tmp_path / "run"
    assert run_train("--preset", "speedrun", "--data", text_file, "--out-dir", out, "--vocab-size", "300",
                     "--max-iters", "6", "--warmup-iters", "2", *TINY) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["tokenizer"], config["rotary"], config["optimizer"], config["eval_all_val"]) == \
        ("bpe", True, "muon", True)
    assert [row["step"] for row in read_metrics(out)] == [0, 6]
    assert backend.device_of(load_run(out / "ckpt.npz").model.transformer.wte.weight.data) == "cpu"
