"""The guide in docs/ cannot rot: every command in it is run, and wherever the guide shows an
`output` block, what the command printed must match it.

Conventions in the Markdown: a ```bash block holds commands (one per line); a ```output block
right after it shows what they print (each command's stdout, then its stderr, one command
after another). `# long` after a command shortens a training run here (--max-iters 20, in
place of any --time-budget) so that it checks the command works without taking minutes;
`# exits 2` means the command must fail with a one-line error. `pip install` lines are
skipped: the test runs in the installed project.

An output block matches the printed lines (trailing spaces, and blank lines before the first
and after the last printed line, do not count) when:
  - a line `...` stands for one or more printed lines left out there (two `...` in a row, or a
    block of nothing but `...`, is an error in the guide);
  - shown lines with no `...` between them are consecutive printed lines, and these groups
    come in the block's order;
  - a block that does not start with `...` starts at the first printed line, and one that
    does not end with `...` ends at the last. A block without `...` is the whole output.
So leaving a line out without a `...` fails, and so does a `...` that leaves nothing out.

The chapters run in order in one fresh directory, as a reader runs them (chapter 5 samples
chapter 4's run), with the corpus under data/. Every block whose commands change a file there
(the training runs, --png) runs a second time at once, and must print what the guide shows
and leave the same file names again: a reader can run any command twice. The blocks that only
read run once, which keeps the test's time well under twice a single pass. The directory is a
git repository with the project's .gitignore, as a reader's clone is, and `git status` there
must be the same after the guide as before: everything the commands write is ignored (without
git or the .gitignore, that check is left out with a warning saying so). And all of it lands in
SCRATCH, or beside the corpus in data/ (its tokenized cache), not across the reader's clone.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = [REPO / "docs" / "README.md"] + sorted((REPO / "docs").glob("0*.md"))
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
SHORTEN = ["--max-iters", "20", "--eval-interval", "10", "--eval-iters", "2", "--sample-tokens", "0"]
OMITTED = "..."
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCRATCH = "scratch/"  # where the guide's runs and pictures go (git ignores it)


def steps(path: Path) -> list[tuple[str, str, str | None]]:
    """(kind, code, expected output or None) for each runnable block of a chapter."""
    blocks = BLOCK.findall(path.read_text())
    found = []
    for i, (kind, code) in enumerate(blocks):
        if kind in ("bash", "python"):
            expected = blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == "output" else None
            found.append((kind, code, expected))
    return found


def output_mismatch(block: str, printed: str) -> str | None:
    """None where the output block matches the printed text (the rule is in the module's
    docstring), else what does not match."""
    shown = [line.rstrip() for line in block.strip("\n").splitlines()]
    lines = [line.rstrip() for line in printed.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    runs: list[list[str]] = [[]]  # the shown lines between the `...` lines
    for line in shown:
        if line.strip() == OMITTED:
            runs.append([])
        else:
            runs[-1].append(line)
    if any(not run for run in runs[1:-1]) or not any(runs):
        return f"the block has two {OMITTED!r} in a row, or nothing else"
    if len(runs) == 1:
        return None if lines == shown else _first_difference(shown, lines, 0)
    head, middle, tail = runs[0], runs[1:-1], runs[-1]
    end = len(lines) - len(tail)  # where the tail starts
    if lines[: len(head)] != head:
        return _first_difference(head, lines, 0)
    if end < 0 or lines[end:] != tail:
        return _first_difference(tail, lines, max(end, 0))
    position = len(head)
    for run in middle:  # each at its earliest place after a gap of at least one line
        starts = [i for i in range(position + 1, end - len(run)) if lines[i : i + len(run)] == run]
        if not starts:
            return (f"the lines\n  {run!r}\nare not printed together after printed line {position} "
                    f"with at least one line left out on each side")
        position = starts[0] + len(run)
    if end - position < 1:
        return f"a {OMITTED!r} before printed line {end + 1} leaves out no line"
    return None


def _first_difference(want: list[str], lines: list[str], start: int) -> str:
    for offset, line in enumerate(want):
        got = lines[start + offset] if 0 <= start + offset < len(lines) else None
        if got != line:
            return f"printed line {start + offset + 1} should be\n  {line!r}\nbut is\n  {got!r}"
    return f"there are {len(lines) - len(want)} printed lines the block does not show (mark them {OMITTED!r})"


@pytest.mark.parametrize("block, printed, ok", [
    ("a\nb\n", "a\nb\n", True),
    ("a\nb\n", "\na \nb\n\n", True),  # trailing spaces and outer blank lines do not count
    ("a\nc\n", "a\nb\nc\n", False),  # a line left out without `...`
    ("a\n...\nc\n", "a\nb\nc\n", True),
    ("a\n...\nc\n", "a\nc\n", False),  # a `...` that leaves nothing out
    ("a\n", "a\nb\n", False),  # the block must reach the last printed line
    ("b\n", "a\nb\n", False),  # and start at the first
    ("a\n...\n", "a\nb\nc\n", True),
    ("...\nc\n", "a\nb\nc\n", True),
    ("...\nb\n...\n", "a\nb\nc\n", True),
    ("...\nb\nd\n...\n", "a\nb\nc\nd\ne\n", False),  # shown together, printed apart
    ("...\nb\n...\nd\n...\n", "a\nb\nc\nd\ne\n", True),
    ("...\nb\n...\nb\n", "a\nb\nc\nb\n", True),  # a run found at its earliest place, then the tail
    ("a\n...\n...\nc\n", "a\nb\nx\nc\n", False),  # two `...` in a row
    ("...\n", "a\n", False),
])
def test_output_blocks_show_every_line_or_mark_what_they_leave_out(block, printed, ok):
    assert (output_mismatch(block, printed) is None) == ok


def run_command(line: str, cwd: Path) -> subprocess.CompletedProcess:
    command, _, comment = line.partition("#")
    args = shlex.split(command)
    if args[:3] == ["python", "-m", "pip"]:
        return subprocess.CompletedProcess(args, 0, "", "")
    args[0] = sys.executable
    if "long" in comment:  # (a --time-budget chooses the steps that SHORTEN gives: it goes)
        if "--time-budget" in args:
            at = args.index("--time-budget")
            del args[at : at + 2]
        args += SHORTEN
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def run_block(code: str, expected: str | None, cwd: Path, where: str) -> None:
    printed = ""
    for line in filter(None, (raw.strip() for raw in code.splitlines())):
        result = run_command(line, cwd)
        printed += result.stdout + result.stderr
        if "exits 2" in line:
            assert result.returncode == 2, f"{where}: {line} should fail:\n{printed}"
            assert "Traceback" not in result.stderr
        else:
            assert result.returncode == 0, f"{where}: {line} failed:\n{result.stdout}\n{result.stderr}"
    if expected is not None:
        mismatch = output_mismatch(expected, printed)
        assert mismatch is None, f"{where}: {mismatch}\nThe commands printed:\n{printed}"


def files_under(directory: Path) -> dict[str, tuple[int, int]]:
    """Each file's (size, modification time) by its path, leaving out .git."""
    found = {}
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            stat = (Path(root) / name).lstat()
            found[str((Path(root) / name).relative_to(directory))] = (stat.st_size, stat.st_mtime_ns)
    return found


def git_status(directory: Path) -> str:
    # the project's .gitignore alone decides, not the user's own global ignore file
    command = ["git", "-c", "core.excludesFile=/dev/null", "status", "--porcelain", "--untracked-files=all"]
    return subprocess.run(command, cwd=directory, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A fresh directory, as a reader's clone: the corpus under data/, and (where git is
    installed and the project has its .gitignore) a git repository that ignores what the
    project ignores."""
    corpus = REPO / "data" / "tinyshakespeare"
    if not (corpus / "input.txt").exists():
        pytest.skip(f"corpus not found at {corpus}/input.txt")
    (tmp_path / "data" / "tinyshakespeare").mkdir(parents=True)  # a copy: the tokenized cache goes beside it
    shutil.copy(corpus / "input.txt", tmp_path / "data" / "tinyshakespeare" / "input.txt")
    if shutil.which("git") and (REPO / ".gitignore").exists():
        shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, capture_output=True)
    return tmp_path


@pytest.mark.slow
def test_every_command_in_the_guide_prints_what_it_shows_can_run_again_and_leaves_git_clean(workdir):
    status_before = git_status(workdir) if (workdir / ".git").exists() else None
    pictures = []
    for chapter in CHAPTERS:
        for kind, code, expected in steps(chapter):
            if kind == "python":
                exec(compile(code, str(chapter), "exec"), {})
                continue
            pictures += re.findall(r"--png (\S+)", code)
            before = files_under(workdir)
            run_block(code, expected, workdir, chapter.name)
            written = files_under(workdir)
            elsewhere = [path for path in written.keys() - before.keys() if not path.startswith((SCRATCH, "data/"))]
            assert not elsewhere, f"{chapter.name}: {code!r} writes outside {SCRATCH} and data/: {elsewhere}"
            if written != before:  # once more, as a reader who runs the command again
                run_block(code, expected, workdir, f"{chapter.name}, run a second time")
                again = files_under(workdir)
                assert again.keys() == written.keys(), f"{chapter.name}: run twice, {code!r} leaves other files"

    assert pictures, "the guide draws no picture: what does this test check?"
    for picture in pictures:
        assert picture.startswith(SCRATCH), f"--png {picture} writes outside {SCRATCH}"
        if importlib.util.find_spec("matplotlib") is not None:  # (without it, the commands say they draw nothing)
            path = workdir / picture
            assert path.exists(), f"the guide's command wrote no {picture}"
            assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5000

    if status_before is None:
        warnings.warn("git status not compared: git is not installed, or the project has no .gitignore "
                      "(not a git checkout)", stacklevel=1)
    else:
        assert git_status(workdir) == status_before, "the guide's commands leave files git does not ignore"


def test_the_guides_runs_and_pictures_go_to_one_directory_that_git_ignores():
    """Every training run of the guide names its --out-dir, and every --out-dir and --png is
    under SCRATCH, which the project's .gitignore names: a reader who follows the guide finds
    them in one place, and can delete it."""
    commands = [line for chapter in CHAPTERS for kind, code, _ in steps(chapter) if kind == "bash"
                for line in code.splitlines()]
    assert all("--out-dir" in line for line in commands if "gpt.train" in line)
    paths = [path for line in commands for path in re.findall(r"--(?:out-dir|png) (\S+)", line)]
    assert len(paths) > 10 and all(path.startswith(SCRATCH) for path in paths), paths
    assert SCRATCH in (REPO / ".gitignore").read_text().splitlines()


def test_the_guide_is_linked_from_the_readme():
    assert "docs/README.md" in (REPO / "README.md").read_text()
