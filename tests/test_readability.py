"""The trainer's shape, measured on the code: the few lines that know about processes, short
functions in train.py, and settings that flow down from the entry point (nanoGPT's train.py is
the model: its DDP takes about 35 lines and a handful of names, and its config is read once at
the top). A change that makes the trainer harder to read in these ways fails here."""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import tokenize
from pathlib import Path

from gpt import train
from gpt.config import TrainConfig

GPT = Path(__file__).resolve().parent.parent / "gpt"
# What names the processes of a run: ranks, the world, MPI (mpiexec, mpi4py...), and `writes`,
# the flag of the process that writes the files (nanoGPT's master_process).
PROCESS_WORDS = re.compile(r"rank|world|mpi", re.IGNORECASE)
WRITER = "writes"  # (a name; in a string, the word means anything)
NOT_PROCESSES = {"compile"}  # (holds 'mpi')
MERGE_RANKS = "bpe.py"  # a BPE's merge ranks are another sense of the word


def code_tokens(path: Path) -> dict[int, list[tokenize.TokenInfo]]:
    """The tokens of each line of code: docstrings, comments and blank lines left out."""
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value,
                                                                                                   str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    lines: dict[int, list[tokenize.TokenInfo]] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.NAME, tokenize.STRING, tokenize.FSTRING_START if sys.version_info >= (3, 12)
                          else tokenize.STRING) and token.start[0] not in docstrings:
            lines.setdefault(token.start[0], []).append(token)
    return lines


def names_processes(token: tokenize.TokenInfo) -> bool:
    if token.type == tokenize.NAME and token.string == WRITER:
        return True
    words = [token.string] if token.type == tokenize.NAME else re.findall(r"\w+", token.string)
    return any(PROCESS_WORDS.search(word) and word not in NOT_PROCESSES for word in words)


def test_few_lines_of_gpt_name_ranks_the_world_or_mpi():
    lines, names = 0, set()
    for path in sorted(GPT.glob("*.py")):
        if path.name == MERGE_RANKS:
            continue
        for tokens in code_tokens(path).values():
            hits = [t for t in tokens if names_processes(t)]
            lines += bool(hits)
            names.update(t.string for t in hits if t.type == tokenize.NAME)
    assert lines <= 60, lines
    assert len(names) <= 10, sorted(names)


def test_no_function_in_train_py_is_over_40_lines():
    tree = ast.parse((GPT / "train.py").read_text())
    lengths = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert max(lengths.values()) <= 40, {name: n for name, n in lengths.items() if n > 40}


def carries_settings(value: object, depth: int = 0) -> bool:
    """The run's settings (the parsed flags or a TrainConfig), or a function that closes over
    them, or an object of gpt/ that holds them."""
    if isinstance(value, (TrainConfig, argparse.Namespace)):
        return True
    if depth == 2:
        return False
    if callable(value) and getattr(value, "__closure__", None):
        return any(carries_settings(cell.cell_contents, depth + 1) for cell in value.__closure__
                   if cell.cell_contents is not value)
    holds = getattr(value, "__dict__", None)
    return isinstance(holds, dict) and type(value).__module__.startswith("gpt") and any(
        isinstance(v, (TrainConfig, argparse.Namespace)) for v in holds.values())


def test_a_runs_settings_go_down_through_the_modules(text_file, tmp_path):
    """Every call of a function of gpt/ that is handed the settings is a stop; a return is a
    stop in a module that the settings had left before (train -> config -> train is one). A
    short run, evaluations and checkpoints included, makes few."""
    stops = []

    def profile(frame, event, arg):
        module, code = frame.f_globals.get("__name__", ""), frame.f_code
        if event != "call" or not module.startswith("gpt") or code.co_name.startswith("<"):
            return
        arguments = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if any(carries_settings(frame.f_locals.get(name)) for name in arguments):
            stops.append(module)

    sys.setprofile(profile)
    try:
        assert train.main([str(a) for a in ["--data", text_file, "--out-dir", tmp_path / "run", "--max-iters", "2",
                                            "--eval-interval", "1", "--eval-iters", "2", "--workers", "1",
                                            "--sample-tokens", "0", "--quiet"]]) == 0
    finally:
        sys.setprofile(None)
    visits = [module for i, module in enumerate(stops) if i == 0 or stops[i - 1] != module]
    returns = sum(module in visits[: i - 1] for i, module in enumerate(visits))
    assert returns <= 10, " -> ".join(visits)
