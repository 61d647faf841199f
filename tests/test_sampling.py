"""Turning logits into tokens: temperature, top-k, top-p and the inverse-CDF draw; a
byte-level model's samples, always valid UTF-8."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nanograd
from gpt import train
from gpt.bpe import BPETokenizer
from gpt.model import GPT, GPTConfig
from gpt.sample import build_parser
from gpt.sample import main as sampler_main
from gpt.sampling import generate, probabilities, sample

REPO = Path(__file__).resolve().parent.parent
LOGITS = np.array([[2.0, 1.0, 0.5, -1.0], [0.0, 0.0, 3.0, 0.0]])


def test_temperature_one_is_the_softmax():
    expected = np.exp(LOGITS) / np.exp(LOGITS).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities(LOGITS), expected, rtol=1e-12)


@pytest.mark.parametrize("temperature", [1e-3, 1e-310])
def test_a_tiny_temperature_picks_the_argmax(temperature):
    probs = probabilities(LOGITS, temperature)
    assert np.isfinite(probs).all()
    np.testing.assert_array_equal(probs, [[1, 0, 0, 0], [0, 0, 1, 0]])


def test_a_high_temperature_flattens_the_distribution():
    np.testing.assert_allclose(probabilities(LOGITS, 1e6), 0.25, atol=1e-5)


def test_huge_logits_stay_finite():
    probs = probabilities(np.array([[1e30, -1e30, 1e30]]), 0.5)
    np.testing.assert_allclose(probs, [[0.5, 0, 0.5]])


def test_top_k_keeps_the_k_likeliest():
    probs = probabilities(LOGITS[:1], top_k=2)
    assert (probs[0, 2:] == 0).all() and probs[0, 0] > probs[0, 1] > 0
    np.testing.assert_allclose(probs.sum(), 1.0)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    np.testing.assert_allclose(probabilities(logits, top_p=0.7), [[0.625, 0.375, 0, 0]])
    np.testing.assert_allclose(probabilities(logits, top_p=0.1), [[1, 0, 0, 0]])  # the first always stays


def test_draws_follow_the_probabilities():
    probs = np.tile([[0.1, 0.6, 0.3]], (20000, 1))
    counts = np.bincount(sample(probs, np.random.default_rng(0)), minlength=3) / 20000
    np.testing.assert_allclose(counts, [0.1, 0.6, 0.3], atol=0.015)


def test_temperature_zero_is_greedy_the_first_of_equal_maxima():
    logits = np.array([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 3.0, 0.0], [-np.inf, -5.0, -np.inf, -7.0]])
    probs = probabilities(logits, 0.0, top_k=2, top_p=0.5)  # (the cuts keep the likeliest anyway)
    np.testing.assert_array_equal(probs, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(sample(np.repeat(probs, 50, axis=0), np.random.default_rng(0)),
                                  np.repeat([0, 1, 1], 50))


@pytest.mark.parametrize("options,message", [
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=-1e-300), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=-1.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
])
def test_options_out_of_range_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        probabilities(LOGITS, **options)


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "temperature must be 0 or more"),
    (["--top-k", "0"], "top_k must be positive"),
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--max-new-tokens", "-1"], "max_new_tokens must be 0 or more"),
    (["--num-samples", "0"], "--num-samples must be positive"),
])
def test_the_samplers_bad_flags_are_refused_before_it_reads_a_checkpoint(tmp_path, capsys, flags, message):
    assert sampler_main(["--out-dir", str(tmp_path / "no_run"), *flags]) == 2  # (no checkpoint there either)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


class _Draws:
    """A stand-in for np.random.Generator whose random() returns the given numbers."""

    def __init__(self, *values: float):
        self.values = np.array(values)

    def random(self, shape):
        return self.values.reshape(shape)


def test_sample_never_picks_a_token_of_probability_zero_at_the_edges_of_the_draw():
    probs = probabilities(np.array([[0.0, 5.0, 1.0, -1.0]]), top_k=2)  # ids 0 and 3 cut: probability 0
    assert probs[0, 0] == probs[0, 3] == 0
    lowest, highest = 0.0, np.nextafter(1.0, 0.0)  # the ends of [0, 1)
    assert list(sample(np.repeat(probs, 2, axis=0), _Draws(lowest, highest))) == [1, 2]  # not 0, not 3


# ---- a byte-level model's samples are always UTF-8 (gpt.utf8) -------------------------------
@pytest.fixture(scope="module")
def bytes_bpe() -> BPETokenizer:
    """A BPE whose merges hold pieces of 2-, 3- and 4-byte characters as well as whole ones."""
    return BPETokenizer.train("le café de Noël 😀 日本語 €uro naïve " * 10, 320)


def untrained_gpt(vocab_size: int) -> GPT:
    """Random weights: every byte about as likely anywhere, which is where invalid UTF-8 is
    likeliest. A block of 8 tokens, so that the KV cache's window restarts within a sample."""
    nanograd.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16))


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("use_cache", [True, False])
def test_an_untrained_bpe_model_samples_valid_utf8(bytes_bpe, use_cache):
    """8 samples of 40 tokens for each of 5 seeds, at temperatures 0.8 to 1.5, plain and cut by
    top-k and top-p: all of them UTF-8 to the end. Without the mask the same model's samples
    are not (so this is a model that does put bytes anywhere)."""
    model = untrained_gpt(bytes_bpe.vocab_size)
    prompt = np.tile(bytes_bpe.encode("Noël"), (8, 1))  # (8, t)
    unmasked = []
    for seed in range(5):
        for temperature, cuts in [(0.8, {}), (1.0, {"top_k": 50}), (1.2, {"top_p": 0.9}), (1.5, {})]:
            options = dict(temperature=temperature, rng=np.random.default_rng(seed), use_cache=use_cache, **cuts)
            ids = generate(model, prompt, 40, utf8_mask=bytes_bpe.utf8_mask, **options)
            assert all(is_utf8(bytes_bpe.decode_bytes(row)) for row in ids), (seed, temperature, cuts)
            options["rng"] = np.random.default_rng(seed)
            unmasked += [is_utf8(bytes_bpe.decode_bytes(row)) for row in generate(model, prompt, 40, **options)]
    assert not any(unmasked)


def test_an_unfinished_character_in_the_prompt_is_finished_first(bytes_bpe):
    model = untrained_gpt(bytes_bpe.vocab_size)
    euro = list("€".encode())  # three byte tokens
    for cut in (1, 2):
        prompt = np.array([[ord("a"), *euro[:cut]]] * 16)
        ids = generate(model, prompt, 3, rng=np.random.default_rng(cut), utf8_mask=bytes_bpe.utf8_mask)
        assert all(is_utf8(bytes_bpe.decode_bytes(row)) for row in ids)
    last = generate(model, np.array([[ord("a"), *euro[:2]]]), 1, temperature=0.0, utf8_mask=bytes_bpe.utf8_mask)
    assert len(bytes_bpe.decode(last[0])) == 2  # a third byte, no more: the one token left finishes the character


def test_tokens_that_are_not_allowed_get_probability_zero_whatever_the_options():
    allowed = np.array([[False, True, True, False], [True, False, False, False]])
    for options in [{}, {"temperature": 0.0}, {"temperature": 1e-300}, {"top_k": 1}, {"top_p": 0.5},
                    {"temperature": 5.0, "top_k": 3, "top_p": 0.99}]:
        probs = probabilities(LOGITS, allowed=allowed, **options)
        assert (probs[~allowed] == 0).all() and np.allclose(probs.sum(axis=1), 1), options
    np.testing.assert_array_equal(probabilities(LOGITS, 0.0, allowed=allowed), [[0, 1, 0, 0], [1, 0, 0, 0]])


def test_a_mask_for_another_vocabulary_is_refused(bytes_bpe):
    with pytest.raises(ValueError, match=f"the UTF-8 mask is for {bytes_bpe.vocab_size} tokens, the model has 300"):
        generate(untrained_gpt(300), np.array([[1]]), 2, utf8_mask=bytes_bpe.utf8_mask)


def test_the_samplers_help_speaks_of_tokens():
    text = " ".join(build_parser().format_help().split())
    assert "the k likeliest tokens" in text and "likeliest characters" not in text
    assert "the last block_size tokens" in text


def test_sample_speed_times_a_bpe_run_with_its_mask_and_without_and_against_a_commit(text_file, tmp_path):
    out = tmp_path / "bpe"
    assert train.main(["--data", str(text_file), "--out-dir", str(out), "--tokenizer", "bpe", "--vocab-size", "300",
                       "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "8", "--max-iters", "1",
                       "--eval-iters", "1", "--sample-tokens", "0", "--quiet"]) == 0
    script = REPO / "benchmarks" / "sample_speed.py"
    result = subprocess.run([sys.executable, str(script), "--out-dir", str(out), "--tokens", "5", "--rounds", "2",
                             "--versus", "HEAD", "--json"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["utf8_mask"] and row["vocab_size"] == 300 and row["rounds"] == 2 and row["versus"] == "HEAD"
    assert row["kv_cache_tokens_per_s"] > 0 and row["mask_slowdown"] > 0 and row["versus_slowdown"] > 0
