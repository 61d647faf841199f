"""The GPT model: causality, the whole model's gradient, initial loss, KV cache, overfitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nanograd
from gpt.bigram import BigramLanguageModel
from gpt.errors import UserError
from gpt.model import GPT, GPTConfig
from nanograd import gradcheck, no_grad, optim

TINY = dict(vocab_size=11, block_size=4, n_layer=2, n_head=2, n_embd=8)


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    nanograd.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides}))


def random_ids(shape, vocab=TINY["vocab_size"], seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape)


@pytest.mark.parametrize("tie_weights", [True, False])
def test_changing_future_tokens_leaves_past_logits_unchanged(tie_weights, device):
    model = tiny_gpt(tie_weights=tie_weights, block_size=8).to(device)
    idx = random_ids((2, 8))
    logits = model(idx)[0].numpy()
    for t in range(7):
        changed = idx.copy()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % TINY["vocab_size"]
        logits_changed = model(changed)[0].numpy()
        np.testing.assert_allclose(logits_changed[:, : t + 1], logits[:, : t + 1], atol=1e-6)
        assert not np.allclose(logits_changed[:, t + 1 :], logits[:, t + 1 :])


@pytest.mark.parametrize("bias,tie_weights", [(True, True), (False, False)])
def test_whole_model_gradient_matches_finite_differences(bias, tie_weights):
    model = tiny_gpt(bias=bias, tie_weights=tie_weights)
    for p in model.parameters():  # float64, so that finite differences are accurate
        p.data = p.data.astype(np.float64)
    idx, targets = random_ids((2, 4), seed=1), random_ids((2, 4), seed=2)
    names, params = zip(*model.named_parameters())
    # gradcheck perturbs the parameters' own arrays, so the loss can read them from the model
    assert gradcheck(lambda *_: model(idx, targets)[1], *params, names=names)


def loss_and_gradients(model, idx, targets) -> tuple[float, dict[str, np.ndarray]]:
    for p in model.parameters():
        p.data = p.data.astype(np.float64)  # float64: the two paths may differ only by rounding
    _, loss = model(idx, targets)
    loss.backward()
    return loss.item(), {name: p.grad for name, p in model.named_parameters()}


def assert_same_loss_and_gradients(fused, reference, idx, targets) -> None:
    loss, grads = loss_and_gradients(fused, idx, targets)
    reference_loss, reference_grads = loss_and_gradients(reference, idx, targets)
    assert loss == pytest.approx(reference_loss, rel=1e-12)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, reference_grads[name], rtol=1e-9, atol=1e-13, err_msg=name)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 6), n_head=st.integers(1, 3), head_size=st.integers(1, 4),
       n_layer=st.integers(1, 2), vocab_size=st.integers(2, 9), bias=st.booleans(), tie_weights=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fused_ops_compute_the_lectures_gpt(B, T, n_head, head_size, n_layer, vocab_size, bias, tie_weights, seed):
    """GPTConfig(fused=True) (attention, LayerNorm and GELU as one op each) gives the loss and
    every gradient of fused=False (the lecture's Tensor ops), with the same weights."""
    config = dict(vocab_size=vocab_size, block_size=T, n_layer=n_layer, n_head=n_head,
                  n_embd=n_head * head_size, bias=bias, tie_weights=tie_weights)
    fused, reference = (tiny_gpt(seed, **config, fused=flag) for flag in (True, False))
    idx, targets = random_ids((B, T), vocab_size, seed), random_ids((B, T), vocab_size, seed + 1)
    assert_same_loss_and_gradients(fused, reference, idx, targets)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 4), T=st.integers(1, 8), vocab_size=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_the_bigrams_loss_from_counts_is_the_lectures_cross_entropy(B, T, vocab_size, seed):
    fused, reference = (BigramLanguageModel(vocab_size, fused=flag) for flag in (True, False))
    weights = np.random.default_rng(seed).normal(0.0, 3.0, (vocab_size, vocab_size))
    reference.load_state_dict({"token_embedding_table.weight": weights})
    fused.load_state_dict({"token_embedding_table.weight": weights})
    idx, targets = random_ids((B, T), vocab_size, seed), random_ids((B, T), vocab_size, seed + 1)
    assert_same_loss_and_gradients(fused, reference, idx, targets)


def test_untrained_loss_is_near_uniform_guess():
    model = tiny_gpt(vocab_size=65, block_size=16, n_embd=32)
    _, loss = model(random_ids((8, 16), vocab=65, seed=3), random_ids((8, 16), vocab=65, seed=4))
    assert abs(loss.item() - math.log(65)) < 0.1


@pytest.mark.parametrize("rotary", [False, True], ids=["learned-positions", "rotary"])
def test_kv_cached_and_uncached_generation_agree_within_block(device, rotary):
    model = tiny_gpt(block_size=8, rotary=rotary).to(device).eval()
    cache = model.new_cache()
    idx = random_ids((3, 2), seed=5)
    with no_grad():
        for _ in range(6):
            full = model.next_logits(idx, None).numpy()
            cached = model.next_logits(idx, cache).numpy()
            np.testing.assert_allclose(cached, full, atol=1e-5)
            idx = np.concatenate([idx, random_ids((3, 1), seed=idx.shape[1])], axis=1)


@pytest.mark.parametrize("rotary", [False, True], ids=["learned-positions", "rotary"])
def test_past_the_block_the_cache_restarts_on_the_last_half_block(rotary):
    """With learned positions the cache cannot slide: when the sequence outgrows the block it
    starts again from the last block // 2 tokens and grows back to a full block. At every
    length its logits are those of the full model run on that window (kvcache.KVCache).
    Rotary embeddings take the window's positions from 0, as the full model does."""
    block = 8
    model = tiny_gpt(block_size=block, rotary=rotary).eval()
    cache = model.new_cache()
    idx = random_ids((2, 1), seed=8)
    start = 0  # where the cache's window begins
    with no_grad():
        for t in range(1, 3 * block):
            if t - start > block:
                start = t - block // 2
            window = model.next_logits(idx[:, start:], None).numpy()
            np.testing.assert_allclose(model.next_logits(idx, cache).numpy(), window, atol=1e-5)
            idx = np.concatenate([idx, random_ids((2, 1), seed=100 + t)], axis=1)


def test_cached_generation_runs_past_block_size_and_is_seeded():
    model = tiny_gpt(block_size=8).eval()
    prompt = random_ids((1, 3), seed=6)
    a = model.generate(prompt, 30, rng=np.random.default_rng(0))
    b = model.generate(prompt, 30, rng=np.random.default_rng(0))
    assert a.shape == (1, 33) and (a[:, :3] == prompt).all()
    np.testing.assert_array_equal(a, b)
    assert ((0 <= a) & (a < TINY["vocab_size"])).all()


def test_cached_generation_with_a_one_token_block():
    model = tiny_gpt(block_size=1).eval()
    out = model.generate(random_ids((1, 1), seed=7), 5, rng=np.random.default_rng(0))
    assert out.shape == (1, 6)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("idx,message", [
    (np.array([[1, -1]]), "in \\[0, "),  # NumPy would wrap -1 round to the last token
    (np.array([[1, TINY["vocab_size"]]]), "in \\[0, "),
    (np.zeros((1, 0), dtype=np.int64), "t >= 1"),
    (np.zeros((0, 2), dtype=np.int64), "t >= 1"),
    (np.array([1, 2]), "shape \\(B, t\\)"),
    (np.array([[1.9, 2.2]]), "integer"),
])
def test_generate_refuses_a_bad_prompt(idx, message, use_cache):
    with pytest.raises(ValueError, match=message):
        tiny_gpt().generate(idx, 3, rng=np.random.default_rng(0), use_cache=use_cache)


def test_generate_refuses_a_negative_count():
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_gpt().generate(np.array([[1]]), -4)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_at_temperature_zero_takes_the_argmax_each_step(use_cache):
    """Greedy decoding: each new token is the argmax of the full model's logits for the text so
    far (within one block, where the cache changes nothing), whatever the seed."""
    model = tiny_gpt(block_size=12)
    model.eval()
    prompt = random_ids((2, 3), seed=4)
    out = model.generate(prompt, 9, temperature=0.0, rng=np.random.default_rng(0), use_cache=use_cache)
    again = model.generate(prompt, 9, temperature=0.0, rng=np.random.default_rng(99), use_cache=use_cache)
    np.testing.assert_array_equal(out, again)
    with no_grad():
        for t in range(3, 12):
            logits = model(out[:, :t])[0].numpy()[:, -1, :]  # (B, V) after the first t tokens
            np.testing.assert_array_equal(out[:, t], logits.argmax(axis=-1))


def test_the_bigram_generates_with_the_same_options_as_gpt():
    from gpt.bigram import BigramLanguageModel

    out = BigramLanguageModel(7).generate(np.array([[1, 2]]), 4, temperature=0.8, top_k=3, top_p=0.9,
                                          rng=np.random.default_rng(0), use_cache=False)
    assert out.shape == (1, 6) and (out[:, :2] == [[1, 2]]).all() and ((out >= 0) & (out < 7)).all()


def test_same_seed_same_training():
    def run():
        model = tiny_gpt(seed=7, dropout=0.1, block_size=8)
        opt = optim.AdamW(model.parameters(), lr=1e-2)
        rng = np.random.default_rng(0)
        nanograd.manual_seed(7)
        for _ in range(5):
            x, y = rng.integers(0, 11, (4, 8)), rng.integers(0, 11, (4, 8))
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item(), model.state_dict()

    (loss_a, state_a), (loss_b, state_b) = run(), run()
    assert loss_a == loss_b
    for name in state_a:
        np.testing.assert_array_equal(state_a[name], state_b[name])


def test_overfits_one_batch():
    model = tiny_gpt(block_size=8, n_embd=32, n_head=4)
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    x, y = random_ids((4, 8), seed=8), random_ids((4, 8), seed=9)
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_parameter_names_follow_gpt2():
    names = [n for n, _ in tiny_gpt(tie_weights=False).named_parameters()]
    for expected in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
                     "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
                     "transformer.h.0.ln_2.weight", "transformer.h.0.mlp.c_fc.weight",
                     "transformer.h.1.mlp.c_proj.weight", "transformer.ln_f.weight", "lm_head.weight"]:
        assert expected in names
    model = tiny_gpt()
    assert model.transformer.h[0].attn.c_attn.weight.shape == (8, 24)  # Linear weights are (in, out)


def test_residual_projections_get_scaled_init():
    model = tiny_gpt(n_layer=8, n_embd=64, n_head=4)
    std = model.transformer.h[0].mlp.c_proj.weight.data.std()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(model.transformer.h[0].mlp.c_fc.weight.data.std() - 0.02) < 0.002


def test_bad_configs_are_refused():
    with pytest.raises(UserError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(UserError, match="positive"):
        GPTConfig(n_layer=0)
    with pytest.raises(ValueError, match="block_size"):
        tiny_gpt()(random_ids((1, 5)))
