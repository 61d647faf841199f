"""Modules (names, state dicts, modes) and optimizers (SGD, AdamW, clipping, schedule)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nanograd import Tensor, backend, nn, optim
from nanograd import functional as F


def small_net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Dropout(0.5), nn.Linear(4, 2, bias=False))


def test_named_parameters_have_dotted_names_in_order():
    names = [n for n, _ in small_net().named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight"]


def test_nested_modules_and_shared_parameters():
    class Tied(nn.Module):
        def __init__(self):
            self.embed = nn.Embedding(5, 3)
            self.blocks = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])
            self.head = nn.Linear(3, 5)
            self.head.weight = self.embed.weight  # shared: listed once, under its first name

    names = [n for n, _ in Tied().named_parameters()]
    assert names == ["embed.weight", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias",
                     "head.bias"]


def test_modulelist_names_its_children_by_index():
    class Net(nn.Module):
        def __init__(self):
            self.layers = nn.ModuleList([nn.Linear(2, 2, bias=False), nn.LayerNorm(2)])

    assert [n for n, _ in Net().named_parameters()] == ["layers.0.weight", "layers.1.weight", "layers.1.bias"]


def test_parameter_requires_grad():
    p = nn.Parameter(np.zeros(3, dtype=np.float32))
    assert p.requires_grad and isinstance(p, Tensor)


def test_layer_shapes_and_initial_values():
    linear, embed, norm = nn.Linear(3, 2), nn.Embedding(7, 5), nn.LayerNorm(4)
    assert linear.weight.shape == (3, 2) and linear.bias.shape == (2,)
    assert len(nn.Linear(3, 2, bias=False).parameters()) == 1
    assert embed.weight.shape == (7, 5)
    np.testing.assert_array_equal(norm.weight.data, np.ones(4))
    np.testing.assert_array_equal(norm.bias.data, np.zeros(4))
    assert all(p.requires_grad for m in (linear, embed, norm) for p in m.parameters())


def test_linear_computes_x_at_w_plus_b():
    layer = nn.Linear(3, 2)
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(x)).data, x @ layer.weight.data + layer.bias.data, rtol=1e-6)


def test_embedding_and_layernorm_modules_call_the_functional_ops():
    embed, norm = nn.Embedding(4, 3), nn.LayerNorm(3)
    idx = np.array([[1, 1, 3]])
    np.testing.assert_array_equal(embed(idx).data, embed.weight.data[idx])
    y = norm(embed(idx)).data
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-5)


LOAD_ERRORS = (KeyError, ValueError, RuntimeError)


def test_state_dict_round_trip():
    a, b = small_net(), small_net()
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32))
    a.eval(), b.eval()
    assert not np.allclose(a(x).data, b(x).data)
    state = a.state_dict()
    assert list(state) == [n for n, _ in a.named_parameters()]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b.load_state_dict(state)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_load_state_dict_refuses_a_shape_mismatch():
    net, state = small_net(), small_net().state_dict()
    state["0.weight"] = np.zeros((9, 9), dtype=np.float32)
    with pytest.raises(LOAD_ERRORS, match=r"0.weight.*\(9, 9\).*\(3, 4\)"):
        net.load_state_dict(state)


def test_load_state_dict_refuses_missing_and_unexpected_keys():
    net, state = small_net(), small_net().state_dict()
    before = net.state_dict()
    with pytest.raises(LOAD_ERRORS, match=r"missing.*0\.weight"):
        net.load_state_dict({k: v for k, v in state.items() if k != "0.weight"})
    with pytest.raises(LOAD_ERRORS, match=r"unexpected.*extra"):
        net.load_state_dict({**state, "extra": np.zeros(1)})
    for name, value in net.state_dict().items():  # a refused load changes nothing
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_state_dict_is_a_copy():
    net = small_net()
    state = net.state_dict()
    state["0.bias"][:] = 123
    assert not (net[0].bias.data == 123).any()


def test_train_and_eval_reach_every_submodule():
    net = small_net()
    net.eval()
    assert all(not m.training for m in net.modules())
    x = Tensor(np.ones((2, 3)))
    np.testing.assert_array_equal(net(x).data, net(x).data)  # dropout is off in eval
    net.train()
    assert all(m.training for m in net.modules())


@pytest.mark.parametrize("clear", [lambda net: net.zero_grad(), lambda net: optim.AdamW(net.parameters()).zero_grad()],
                         ids=["module", "optimizer"])
def test_zero_grad_clears_every_gradient(clear):
    net = small_net()
    F.cross_entropy(net(Tensor(np.ones((2, 3), dtype=np.float32))), np.array([0, 1])).backward()
    assert all(p.grad is not None for p in net.parameters())
    clear(net)
    assert all(p.grad is None for p in net.parameters())


# ---- optimizers --------------------------------------------------------------------------------
def param(values) -> nn.Parameter:
    return nn.Parameter(np.array(values, dtype=np.float64))


def test_sgd_step_matches_the_formula():
    p = param([1.0, -2.0])
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.array([0.5, -1.0])
    opt.step()
    np.testing.assert_allclose(p.data, [1.0 - 0.05, -2.0 + 0.1])


def test_sgd_on_a_real_backward():
    p = param([3.0])
    opt = optim.SGD([p], lr=0.25)
    (p * p).sum().backward()  # grad 2p = 6
    opt.step()
    np.testing.assert_allclose(p.data, [3.0 - 0.25 * 6.0])


def test_sgd_with_momentum_matches_the_formula():
    p = param([1.0, -2.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    velocity = np.zeros(2)
    expected = p.data.copy()
    for g in ([1.0, 1.0], [0.5, -1.0], [0.0, 2.0]):
        p.grad = np.array(g)
        opt.step()
        velocity = 0.9 * velocity + np.array(g)
        expected -= 0.1 * velocity
    np.testing.assert_allclose(p.data, expected)


def test_sgd_weight_decay_adds_wd_times_p_to_the_gradient():
    p = param([2.0, -1.0])
    opt = optim.SGD([p], lr=0.1, weight_decay=0.5)
    p.grad = np.array([0.0, 1.0])
    opt.step()
    np.testing.assert_allclose(p.data, [2.0 - 0.1 * 0.5 * 2.0, -1.0 - 0.1 * (1.0 + 0.5 * -1.0)])


@pytest.mark.parametrize("make", [
    lambda groups: optim.SGD(groups, lr=1.0),
    lambda groups: optim.AdamW(groups, lr=1.0, weight_decay=0.0),
], ids=["SGD", "AdamW"])
def test_setting_lr_applies_to_every_group(make):
    a, b = param([0.0]), param([0.0])
    opt = make([{"params": [a]}, {"params": [b], "weight_decay": 0.0}])
    opt.lr = 0.01
    assert opt.lr == 0.01
    a.grad, b.grad = np.array([1.0]), np.array([1.0])
    opt.step()
    np.testing.assert_allclose(a.data, [-0.01], rtol=1e-6)  # a first step of either is lr * sign(g)
    np.testing.assert_allclose(b.data, [-0.01], rtol=1e-6)


@pytest.mark.parametrize("block", [2, 1 << 16], ids=["in-blocks-of-2", "whole"])
def test_adamw_matches_the_formula_and_skips_decay_where_asked(monkeypatch, block):
    monkeypatch.setattr(backend, "BLOCK_ELEMENTS", block)  # the update runs block by block
    decayed, plain = param([1.0, -2.0, 3.0]), param([0.5])
    opt = optim.AdamW([{"params": [decayed]}, {"params": [plain], "weight_decay": 0.0}],
                      lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    grads = [np.array([0.1, -0.2, 0.3]), np.array([-0.5, 0.4, 0.0])]
    p, m, v = decayed.data.copy(), np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        decayed.grad, plain.grad = g.copy(), np.array([1.0])
        opt.step()
        p *= 1 - 0.01 * 0.1
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        p -= 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.99**t)) + 1e-8)
    np.testing.assert_allclose(decayed.data, p, rtol=1e-12)
    np.testing.assert_allclose(plain.data, [0.5 - 2 * 0.01], rtol=1e-9)  # Adam steps of size lr, no decay


def test_adamw_leaves_a_parameter_without_gradient_alone():
    used, unused = (nn.Parameter(np.ones(3, dtype=np.float32)) for _ in range(2))
    opt = optim.AdamW([used, unused], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        used.grad, unused.grad = np.ones(3, dtype=np.float32), None
        opt.step()
    np.testing.assert_array_equal(unused.data, np.ones(3))  # no decay, no momentum
    assert (used.data < 0.8).all()
    unused.grad = np.zeros(3, dtype=np.float32)
    opt.step()  # its moments stayed 0: a zero gradient now moves it only by decay
    np.testing.assert_allclose(unused.data, 1 - 0.1 * 0.5, rtol=1e-6)


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1), lambda ps: optim.AdamW(ps, lr=0.1)],
                         ids=["SGD", "AdamW"])
def test_optimizers_keep_each_parameter_dtype(make):
    half, full = nn.Parameter(np.ones(2, dtype=np.float32)), nn.Parameter(np.ones(3, dtype=np.float64))
    opt = make([half, full])
    half.grad, full.grad = np.ones(2, dtype=np.float32), np.ones(3)
    opt.step()
    assert (half.dtype, full.dtype) == (np.float32, np.float64)
    assert (half.shape, full.shape) == ((2,), (3,))


def test_adamw_minimises_a_quadratic():
    p = param([3.0, -4.0])
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.0)
    for _ in range(300):
        loss = ((p - 1.0) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(p.data, [1.0, 1.0], atol=1e-2)


def test_adamw_state_round_trip():
    p = param([1.0, 2.0])
    opt = optim.AdamW([p], lr=0.1)
    p.grad = np.array([0.3, -0.1])
    opt.step()
    q = param(p.data.copy())
    opt2 = optim.AdamW([q], lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    p.grad = q.grad = np.array([0.2, 0.2])
    opt.step()
    opt2.step()
    np.testing.assert_array_equal(p.data, q.data)


def test_clip_grad_norm_returns_the_norm_before_clipping():
    a, b = param([0.0, 0.0]), param([0.0])
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([4.0])
    norm = optim.clip_grad_norm([a, b], max_norm=1.0)
    assert isinstance(norm, float) and norm == pytest.approx(5.0)
    total = math.sqrt((a.grad**2).sum() + (b.grad**2).sum())
    assert total == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(a.grad, [0.6, 0.0], rtol=1e-5)
    a.grad = np.array([0.1, 0.0])
    b.grad = np.array([0.0])
    assert optim.clip_grad_norm([a, b], max_norm=1.0) == pytest.approx(0.1)
    np.testing.assert_allclose(a.grad, [0.1, 0.0])  # under the limit: unchanged


def test_clip_grad_norm_adds_up_in_float64():
    """Two float32 gradients whose squares each nearly fill float32's range (3.4e38): their sum
    would overflow to inf, and clipping by an infinite norm would zero every gradient."""
    params = [Tensor(np.zeros(2, np.float32), requires_grad=True) for _ in range(2)]
    for p in params:
        p.grad = np.full(2, 1e19, np.float32)  # each g . g = 2e38
    assert optim.clip_grad_norm(params, 1.0) == pytest.approx(2e19, rel=1e-6)
    for p in params:
        assert np.isfinite(p.grad).all() and np.all(p.grad > 0)


def test_sgd_trains_a_linear_regression():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32) + 0.3
    model = nn.Linear(3, 1)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    losses = []
    for _ in range(200):
        loss = ((model(Tensor(x)) - Tensor(y)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-6 < 0.1 < losses[0]
    np.testing.assert_allclose(model.weight.data.ravel(), [1.0, -2.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(model.bias.data, [0.3], atol=1e-3)


def test_cosine_schedule():
    lr = lambda step: optim.cosine_lr(step, max_lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)  # noqa: E731
    assert lr(0) == 0.0 and lr(5) == pytest.approx(0.5) and lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55)  # halfway through the decay
    assert lr(110) == pytest.approx(0.1) and lr(500) == pytest.approx(0.1)
    assert all(lr(s) >= lr(s + 1) for s in range(10, 120))


# ---- corners found by an API review ------------------------------------------------------------
def test_adamw_takes_in_data_replaced_after_it_was_made():
    lin = nn.Linear(2, 2)
    opt = optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0.0)
    lin.weight.data = np.zeros((2, 2), np.float32)  # a custom initialisation, after the optimizer
    lin(Tensor(np.ones((1, 2), np.float32))).sum().backward()
    opt.step()
    np.testing.assert_allclose(lin.weight.data, -0.1, rtol=1e-5)  # Adam's first step: lr * sign(g)
    lin.weight.data = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="make the optimizer after"):
        opt.step()


def test_clipping_finds_the_norm_of_gradients_whose_squares_overflow_float32():
    p = nn.Parameter(np.zeros(2, np.float32))
    p.grad = np.full(2, 1e20, np.float32)
    norm = optim.clip_grad_norm([p], 1.0)
    assert math.isclose(norm, math.sqrt(2) * 1e20, rel_tol=1e-6)
    np.testing.assert_allclose(p.grad, 1 / math.sqrt(2), rtol=1e-5)


def test_load_state_dict_takes_tensors_and_lists():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    b.load_state_dict(dict(a.named_parameters()))
    np.testing.assert_array_equal(b.weight.data, a.weight.data)
    b.load_state_dict({"weight": [[1, 2], [3, 4]], "bias": [0, 0]})
    np.testing.assert_array_equal(b.weight.data, [[1, 2], [3, 4]])
