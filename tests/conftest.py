"""Shared fixtures: deterministic seeds, the real corpus, backends."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from nanograd import backend

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state, so a failure reproduces."""
    random.seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def shakespeare(tmp_path) -> Path:
    """A copy of the real tiny shakespeare corpus (.ci/run copies it into data/) in the test's
    own directory: a run writes its tokenized cache beside the corpus, and in data/ the cache
    would outlive the test: a later test, or the next run of the suite, would find it made
    and take another path."""
    if not CORPUS.exists():
        pytest.skip(f"corpus not found at {CORPUS}: copy ../shared/data/tinyshakespeare/input.txt there")
    copy = tmp_path / "tinyshakespeare" / "input.txt"
    copy.parent.mkdir()
    shutil.copy(CORPUS, copy)
    return copy


def _skip_without_cuda() -> None:
    ok, why = backend.cuda_status()
    if not ok:
        pytest.skip(f"cuda backend unavailable: {why}")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    """Run a test once per backend; the CuPy case skips with the reason where it cannot run."""
    if request.param == "cuda":
        _skip_without_cuda()
    return request.param


@pytest.fixture
def cuda() -> str:
    """For tests that compare the GPU against the CPU: skips with the reason without one."""
    _skip_without_cuda()
    return "cuda"


@pytest.fixture
def text_file(tmp_path) -> Path:
    """A small text of a few distinct lines, for runs of the trainer and the sampler."""
    path = tmp_path / "poem.txt"
    lines = ["the quick brown fox jumps over the lazy dog", "to be or not to be, that is the question"]
    path.write_text("\n".join(lines * 40) + "\n")
    return path
