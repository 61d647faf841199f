"""Mutation check of the hand-written gradients: do the engine tests notice a wrong backward?

    python tests/mutate_backward.py                 # every mutant, two at a time
    python tests/mutate_backward.py --list          # only list the mutation sites
    python tests/mutate_backward.py --only Max      # the mutants whose location contains "Max"

It plants one single-token bug at a time in the backward() methods of nanograd/ops/*.py,
and in the module functions and methods those call: `+` <-> `-`, `*` <-> `/`, `+=` <-> `-=`,
`*=` <-> `/=`, a unary minus dropped, a comparison flipped (`==` <-> `!=`, `<` <-> `<=`,
`>` <-> `>=`). Each mutant is written into a temporary copy of the repository (the source is
never touched, even on Ctrl-C), and the gradient tests run against it with -x; a mutant whose
tests still pass "survives", and is listed. The sites are found with `ast`, and a mutant is
the module unparsed with one node changed, so comments and formatting cannot confuse it.

Not collected by pytest (no test_ prefix); it is slow (minutes), so it is run by hand.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPS = REPO / "nanograd" / "ops"
TESTS = ["tests/test_ops_grad.py", "tests/test_functional.py", "tests/test_engine.py", "tests/test_nn_optim.py"]
COPIED = ["nanograd", "tests", "gpt", "pyproject.toml"]  # what the tests import or read

SWAPS: dict[type, type] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
}
SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Eq: "==", ast.NotEq: "!=",
          ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}


@dataclasses.dataclass(frozen=True)
class Mutant:
    file: Path
    index: int  # the index-th mutable node of the file, in ast.walk order over the mutated functions
    where: str  # e.g. "elementwise.py:27 Sub.backward"
    what: str  # e.g. "-g -> g"

    def source(self) -> str:
        """The module's source with this one mutation applied."""
        tree = ast.parse(self.file.read_text())
        node = _sites(tree)[self.index][1]
        _mutate(node)
        return ast.unparse(tree)


def _mutable(node: ast.AST) -> bool:
    if isinstance(node, (ast.BinOp, ast.AugAssign)):
        return type(node.op) in SWAPS
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub)
    return isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAPS


def _mutate(node: ast.AST) -> None:
    """Change one node in place (for a unary minus: make it a unary plus, which drops it)."""
    if isinstance(node, ast.UnaryOp):
        node.op = ast.UAdd()
    elif isinstance(node, ast.Compare):
        node.ops = [SWAPS[type(node.ops[0])]()]
    else:
        node.op = SWAPS[type(node.op)]()


def _called_names(fn: ast.AST) -> set[str]:
    """Names of the plain functions (f(...)) and methods (self.f(...)) that fn calls."""
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                names.add(node.func.id)
            elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id == "self":
                names.add(node.func.attr)
    return names


def _backward_functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef]]:
    """Every backward method, and, transitively, the module functions and methods of the same
    class (or a base class in this module) that it calls; in source order, each once."""
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
        found = {}
        for base in cls.bases:  # a base class defined here: its methods are inherited
            if isinstance(base, ast.Name) and base.id in classes:
                found.update(methods(classes[base.id]))
        found.update({n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)})
        return found

    chosen: dict[int, tuple[str, ast.FunctionDef]] = {}
    for cls in classes.values():
        own = methods(cls)
        if "backward" not in own:
            continue
        todo = [own["backward"]]
        while todo:
            fn = todo.pop()
            owner = next((c.name for c in classes.values() if fn in c.body), None)
            if id(fn) in chosen:
                continue
            chosen[id(fn)] = (f"{owner}.{fn.name}" if owner else fn.name, fn)
            for name in _called_names(fn):
                callee = own.get(name) or functions.get(name)
                if callee is not None:
                    todo.append(callee)
    return sorted(chosen.values(), key=lambda pair: pair[1].lineno)


def _sites(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """(function name, node) for every mutable node in the backward functions, in a fixed order."""
    return [(name, node) for name, fn in _backward_functions(tree) for node in ast.walk(fn) if _mutable(node)]


def _describe(node: ast.AST) -> str:
    before = ast.unparse(node)
    changed = copy.deepcopy(node)
    _mutate(changed)
    after = ast.unparse(changed)
    if len(before) > 60:  # a long expression: show only the operator
        if isinstance(node, ast.UnaryOp):
            return "unary minus dropped"
        op = node.ops[0] if isinstance(node, ast.Compare) else node.op
        return f"{SYMBOL[type(op)]} -> {SYMBOL[SWAPS[type(op)]]}"
    return f"{before}  ->  {after}"


def mutants() -> list[Mutant]:
    found = []
    for file in sorted(OPS.glob("*.py")):
        for index, (name, node) in enumerate(_sites(ast.parse(file.read_text()))):
            found.append(Mutant(file, index, f"{file.name}:{node.lineno} {name}", _describe(node)))
    return found


def _copy_repository(root: Path) -> Path:
    """A copy at root of what the tests need; each worker mutates its own copy."""
    root.mkdir()
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
        elif source.exists():
            shutil.copy2(source, root / name)
    return root


def run_tests(root: Path, timeout: float) -> tuple[str, float]:
    """'passed', 'failed' or 'timeout', and the seconds it took, for the tests in the copy at root."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS],
                                cwd=root, env=env, capture_output=True, timeout=timeout)
        outcome = "passed" if result.returncode == 0 else "failed"  # (an import error is a failure too)
    except subprocess.TimeoutExpired:
        outcome = "timeout"
    return outcome, time.perf_counter() - start


def run_mutant(mutant: Mutant, root: Path, timeout: float) -> tuple[str, float]:
    """'caught' or 'survived', and the seconds the tests took, for one mutant in the copy at
    root (whose file is put back afterwards). A mutant that runs past the timeout counts as
    caught: a backward that hangs is noticed."""
    target = root / mutant.file.relative_to(REPO)
    original = target.read_text()
    target.write_text(mutant.source())
    try:
        outcome, seconds = run_tests(root, timeout)
    finally:
        target.write_text(original)
    return ("survived" if outcome == "passed" else "caught"), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutation sites and stop")
    parser.add_argument("--only", default="", help="run only the mutants whose location contains this text")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant before it counts as caught")
    args = parser.parse_args()

    todo = [m for m in mutants() if args.only in m.where]
    if args.list:
        for m in todo:
            print(f"{m.where:45} {m.what}")
        print(f"{len(todo)} mutants")
        return 0

    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        roots = [_copy_repository(Path(tmp) / f"repo{i}") for i in range(args.jobs)]
        # the tests must pass unmutated first, or every mutant would look caught
        outcome, seconds = run_tests(roots[0], args.timeout)
        print(f"unmutated: tests {outcome} in {seconds:.0f}s", flush=True)
        if outcome != "passed":
            return 2
        free = list(roots)
        results: dict[Mutant, str] = {}

        def work(mutant: Mutant) -> None:
            root = free.pop()
            try:
                results[mutant], seconds = run_mutant(mutant, root, args.timeout)
            finally:
                free.append(root)
            print(f"{results[mutant]:8} {seconds:5.0f}s  {mutant.where:45} {mutant.what}", flush=True)

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(work, todo))

    survivors = [m for m in todo if results[m] == "survived"]
    print(f"\ncaught {len(todo) - len(survivors)} of {len(todo)} mutants")
    for m in survivors:
        print(f"  survived: {m.where:45} {m.what}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
