"""The guide in docs/ cannot rot: every command in it is run, in order, and wherever the guide
shows an `output` block, those lines must appear in what the command printed.

Conventions in the Markdown: a ```bash block holds commands (one per line); a ```output block
right after it holds lines the commands print (a subset, in order). `# long` after a command
shortens a training run here (--max-iters 20) so that it checks the command works without
taking minutes; `# exits 2` means the command must fail with a one-line error.
`pip install` lines are skipped: the test runs in the installed project.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = [REPO / "docs" / "README.md"] + sorted((REPO / "docs").glob("0*.md"))
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
SHORTEN = ["--max-iters", "20", "--eval-interval", "10", "--eval-iters", "2", "--sample-tokens", "0"]


def steps(path: Path) -> list[tuple[str, str, str | None]]:
    """(kind, code, expected output or None) for each runnable block of a chapter."""
    blocks = BLOCK.findall(path.read_text())
    found = []
    for i, (kind, code) in enumerate(blocks):
        if kind in ("bash", "python"):
            expected = blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == "output" else None
            found.append((kind, code, expected))
    return found


def run_command(line: str, cwd: Path) -> subprocess.CompletedProcess:
    command, _, comment = line.partition("#")
    args = command.split() if '"' not in command else _split_quoted(command)
    if args[:3] == ["python", "-m", "pip"]:
        return subprocess.CompletedProcess(args, 0, "", "")
    args[0] = sys.executable
    if "long" in comment:
        args += SHORTEN
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def _split_quoted(command: str) -> list[str]:
    import shlex

    return shlex.split(command)


def assert_lines_appear_in_order(expected: str, printed: str, where: str) -> None:
    lines = [line.rstrip() for line in printed.splitlines()]
    position = 0
    for want in expected.strip("\n").splitlines():
        want = want.rstrip()
        try:
            position = lines.index(want, position) + 1
        except ValueError:
            raise AssertionError(f"{where}: the guide shows\n  {want!r}\nbut the command printed:\n{printed}") from None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, request) -> Path:
    """One directory for the whole guide, as a reader's clone: the corpus is under data/."""
    corpus = REPO / "data" / "tinyshakespeare"
    if not (corpus / "input.txt").exists():
        pytest.skip(f"corpus not found at {corpus}/input.txt")
    work = tmp_path_factory.mktemp("guide")
    (work / "data").mkdir()
    (work / "data" / "tinyshakespeare").symlink_to(corpus)
    return work


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_every_command_in_the_guide_runs_and_prints_what_it_says(chapter, workdir):
    for kind, code, expected in steps(chapter):
        if kind == "python":
            exec(compile(code, str(chapter), "exec"), {})
            continue
        printed = ""
        for line in filter(None, (raw.strip() for raw in code.splitlines())):
            result = run_command(line, workdir)
            printed += result.stdout + result.stderr
            where = f"{chapter.name}: {line}"
            if "exits 2" in line:
                assert result.returncode == 2, f"{where} should fail:\n{printed}"
                assert "Traceback" not in result.stderr
            else:
                assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
        if expected is not None:
            assert_lines_appear_in_order(expected, printed, chapter.name)


def test_the_guide_is_linked_and_its_pictures_are_real_pngs(workdir):
    """The chapters' runs (above, in the same directory) leave out-bigram and out-docs there, and
    with matplotlib their explain commands must have drawn a picture from each."""
    assert "docs/README.md" in (REPO / "README.md").read_text()
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed: the guide's commands draw no pictures")
    for png, run_dir in (("bigram.png", "out-bigram"), ("attention.png", "out-docs")):
        if not (workdir / run_dir).exists():
            pytest.skip("run with the chapters' tests, whose commands make the pictures")
        path = workdir / png
        assert path.exists(), f"the guide's command wrote no {png}"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
