"""Mutation testing for the core modules: small AST mutants, each run against the module's fast unit tests.

    python tests/mutation/mutate.py loss                # one module (names: TARGETS below)
    python tests/mutation/mutate.py loss captions       # several, one after the other
    python tests/mutation/mutate.py --all               # every core module
    python tests/mutation/mutate.py buckets --list      # the mutants only, no test run
    python tests/mutation/mutate.py buckets --only 7 12 # re-run some mutants by number

Each mutant changes one thing: a comparison (``<`` -> ``<=``, ``==`` -> ``!=``, ``in`` -> ``not in`` ...), an
arithmetic operator (``+`` -> ``-``, ``*`` -> ``/``, ``//`` -> ``/``, ``%`` -> ``//`` ...), ``and`` <-> ``or``, a
removed ``not`` or unary minus, ``True`` <-> ``False``, a number plus one, ``min`` <-> ``max``, or the first two
positional arguments of a call swapped. The repository is copied to a temporary folder (the files git tracks or
would track); each mutant is written into the copy only, its bytecode removed, and the module's tests run there
with ``pytest -x -q -p no:cacheprovider``, in a fork of this process that has torch and diffusers imported
already. A mutant is killed when the tests fail or run past the time limit. One test run at a time, so it fits a
small machine; the working tree is never modified. POSIX only (fork).
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    source: str  # the module to mutate, relative to the repository
    tests: tuple[str, ...]  # its fast unit tests (files or node ids)
    functions: tuple[str, ...] = ()  # only mutate inside these functions (empty: the whole module)


TARGETS = {
    "loss": Target("training/run/loss.py", ("tests/run/test_loss_optim.py",)),
    "captions": Target("training/data/captions.py", ("tests/data/test_captions.py",)),
    "buckets": Target("training/data/buckets.py", ("tests/data/test_buckets.py",)),
    "optim": Target("training/run/optim.py", ("tests/run/test_loss_optim.py",)),
    "names": Target("training/lora_files/names.py", (
        "tests/lora_files/test_names.py", "tests/lora_files/test_names_sdxl.py", "tests/lora_files/test_export.py",
        "tests/lora_files/test_importer.py::test_bare_te_names_and_lora_te1_are_accepted",
        "tests/lora_files/test_importer.py::test_round_trip_is_exact[sdxl-r4-a2]", "-k", "not diffusers_applies")),
    "export": Target("training/lora_files/export.py", ("tests/lora_files/test_export.py", "-k",
                                                       "not diffusers_applies")),
    "importer": Target("training/lora_files/importer.py", ("tests/lora_files/test_importer.py", "-k",
                                                           "not (round_trip_is_exact and (sd1 or sd2))")),
    "self_check": Target("training/lora_files/self_check.py", ("tests/lora_files/test_self_check.py",
                                                                "tests/lora_files/test_sdxl_lora.py")),
    "prepare": Target("training/run/prepare.py", ("tests/run/test_prepare.py",),
                      ("make_dataset", "add_networks", "build_step_parts")),
    "parts": Target("training/run/parts.py", ("tests/run/test_prepare.py",), ("from_config",)),
}

_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
        ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
        ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitOr: ast.BitAnd, ast.BitAnd: ast.BitOr}
_MINMAX = {"min": "max", "max": "min"}


@dataclass(frozen=True)
class Mutant:
    number: int
    line: int
    what: str
    source: str  # the whole mutated module


# ---------------------------------------------------------------------------------------------------------------
# Finding mutants


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, f-strings (their positions are unreliable), and
    ``strict=`` keyword values (a guard against a caller's mistake, not behaviour)."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value,
                                                                                            ast.Constant):
            roots.append(body[0])
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            roots.append(node.annotation)
        if isinstance(node, ast.FunctionDef) and node.returns is not None:
            roots.append(node.returns)
        if isinstance(node, ast.JoinedStr | ast.ImportFrom):
            roots.append(node)
        if isinstance(node, ast.keyword) and node.arg == "strict":
            roots.append(node.value)
    return {id(n) for root in roots for n in ast.walk(root)}


def _nodes_in_scope(tree: ast.Module, functions: tuple[str, ...]) -> list[ast.AST]:
    if not functions:
        return list(ast.walk(tree))
    scopes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name in functions]
    return [n for scope in scopes for n in ast.walk(scope)]


def _variants(node: ast.AST) -> list[tuple[str, ast.AST]]:
    """(description, replacement node) for every mutant of ``node``; the replacement stands where ``node`` stood."""
    out: list[tuple[str, ast.AST]] = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _CMP:
                new = copy.deepcopy(node)
                new.ops[i] = _CMP[type(op)]()
                out.append((f"{type(op).__name__} -> {type(new.ops[i]).__name__}", new))
    elif isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in _BIN:
        new = copy.deepcopy(node)
        new.op = _BIN[type(node.op)]()
        out.append((f"{type(node.op).__name__} -> {type(new.op).__name__}", new))
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out.append((f"{type(node.op).__name__} -> {type(new.op).__name__}", new))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        out.append((f"{type(node.op).__name__} removed", copy.deepcopy(node.operand)))
    elif isinstance(node, ast.Constant):
        out += _constant_variants(node)
    elif isinstance(node, ast.Call):
        out += _call_variants(node)
    return out


def _constant_variants(node: ast.Constant) -> list[tuple[str, ast.AST]]:
    value = node.value
    if isinstance(value, bool):
        return [(f"{value} -> {not value}", ast.Constant(not value))]
    if isinstance(value, int | float):
        return [(f"{value!r} -> {value + 1!r}", ast.Constant(value + 1))]
    return []


def _call_variants(node: ast.Call) -> list[tuple[str, ast.AST]]:
    out: list[tuple[str, ast.AST]] = []
    if isinstance(node.func, ast.Name) and node.func.id in _MINMAX:
        new = copy.deepcopy(node)
        new.func = ast.Name(_MINMAX[node.func.id], ast.Load())
        out.append((f"{node.func.id} -> {new.func.id}", new))
        return out  # min and max do not care about their arguments' order
    args = node.args
    swappable = len(args) >= 2 and not any(isinstance(a, ast.Starred) for a in args[:2])
    if swappable and ast.unparse(args[0]) != ast.unparse(args[1]):
        new = copy.deepcopy(node)
        new.args[0], new.args[1] = new.args[1], new.args[0]
        out.append(("first two arguments swapped", new))
    return out


def _splice(lines: list[bytes], node: ast.AST, text: str) -> str:
    """The module with ``node``'s source span replaced by ``text`` (positions are UTF-8 byte offsets)."""
    start, end = node.lineno - 1, node.end_lineno - 1
    head = b"".join(lines[:start]) + lines[start][: node.col_offset]
    tail = lines[end][node.end_col_offset :] + b"".join(lines[end + 1 :])
    return (head + text.encode() + tail).decode()


def _replacement_text(node: ast.AST, replacement: ast.AST) -> str:
    if isinstance(node, ast.AugAssign):  # a statement: no parentheses around it
        return ast.unparse(replacement)
    return f"({ast.unparse(replacement)})"


def find_mutants(source: str, functions: tuple[str, ...] = ()) -> list[Mutant]:
    """Every mutant of ``source`` that compiles, numbered from 1 in source order."""
    tree = ast.parse(source)
    lines = source.encode().splitlines(keepends=True)
    skipped = _skipped_nodes(tree)
    found = []
    for node in _nodes_in_scope(tree, functions):
        if id(node) in skipped or not hasattr(node, "end_col_offset"):
            continue
        for what, replacement in _variants(node):
            mutated = _splice(lines, node, _replacement_text(node, replacement))
            if _compiles(mutated):
                found.append((node.lineno, node.col_offset, what, mutated))
    found.sort(key=lambda m: (m[0], m[1]))
    return [Mutant(i, line, what, text) for i, (line, _col, what, text) in enumerate(found, start=1)]


def _compiles(source: str) -> bool:
    try:
        compile(source, "<mutant>", "exec")
    except SyntaxError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# Running the tests against each mutant


def copy_repository(dest: Path) -> None:
    """The files git tracks or would track (untracked, not ignored), without bytecode or the virtualenv."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _test_env(root: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1", GRADIO_ANALYTICS_ENABLED="False",
                HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="1")


# Third-party imports every test file needs, paid once: each test run is a fork of this process, which has not
# imported ``training`` or ``tests`` (those come fresh from the copy, mutant included, in every fork).
PRELOAD = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors.torch", "pytest",
           "diffusers.models", "diffusers.schedulers")


def preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: F401  (lazy until touched)
    assert not any(m == "training" or m.startswith("training.") for m in sys.modules), "training imported early"


def _pytest_in_child(root: Path, args: list[str], write_bytecode: bool) -> None:
    """The forked child: run pytest in the copy and exit with its status, output discarded. Only the unmutated run
    writes bytecode, so no mutant's bytecode is ever taken for another's."""
    sys.dont_write_bytecode = not write_bytecode
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.environ.update(_test_env(root))
    os.chdir(root)
    sys.path.insert(0, str(root))
    import pytest

    code = 1
    try:
        code = int(pytest.main(args))
    finally:
        os._exit(code)


def run_tests(root: Path, tests: tuple[str, ...], timeout: float, write_bytecode: bool = False) -> str:
    """"passed", "failed" or "timeout" for the tests run in ``root`` (in a fork, ended on a timeout)."""
    args = ["-x", "-q", "-p", "no:cacheprovider", *tests]
    pid = os.fork()
    if pid == 0:
        _pytest_in_child(root, args, write_bytecode)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "passed" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "timeout"


def _check_imports_copy(root: Path) -> None:
    probe = [sys.executable, "-c", "import training; print(training.__file__)"]
    where = subprocess.run(probe, cwd=root, env=_test_env(root), check=True, capture_output=True, text=True)
    if not Path(where.stdout.strip()).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"the tests would import training from {where.stdout.strip()}, not from the copy {root}")


@dataclass
class Result:
    name: str
    total: int = 0
    killed: int = 0
    survivors: list[Mutant] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.killed / self.total if self.total else 1.0


def mutate_target(name: str, root: Path, only: set[int] | None = None) -> Result:
    target = TARGETS[name]
    path = root / target.source
    original = path.read_text()
    mutants = [m for m in find_mutants(original, target.functions) if not only or m.number in only]
    started = time.monotonic()
    if run_tests(root, target.tests, timeout=600, write_bytecode=True) != "passed":
        raise SystemExit(f"{name}: the tests fail without any mutant: {' '.join(target.tests)}")
    limit = max(15.0, 3 * (time.monotonic() - started))
    print(f"== {name}: {len(mutants)} mutants of {target.source}, tests: {' '.join(target.tests)}", flush=True)
    result = Result(name, total=len(mutants))
    lines = original.splitlines()
    try:
        for mutant in mutants:
            path.write_text(mutant.source)
            _drop_bytecode(path)
            outcome = run_tests(root, target.tests, limit)
            if outcome == "passed":
                result.survivors.append(mutant)
            else:
                result.killed += 1
            status = "SURVIVED" if outcome == "passed" else f"killed ({outcome})"
            print(f"  #{mutant.number:<3} line {mutant.line:<4} {mutant.what:<28} {status:<16} "
                  f"{lines[mutant.line - 1].strip()[:70]}", flush=True)
    finally:
        path.write_text(original)
        _drop_bytecode(path)
    print(f"== {name}: {result.killed}/{result.total} killed ({result.rate:.0%}), "
          f"{len(result.survivors)} survived", flush=True)
    return result


def _drop_bytecode(path: Path) -> None:
    for pyc in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
        pyc.unlink()


def list_mutants(name: str) -> None:
    target = TARGETS[name]
    source = (REPO / target.source).read_text()
    lines = source.splitlines()
    for m in find_mutants(source, target.functions):
        print(f"#{m.number:<3} line {m.line:<4} {m.what:<28} {lines[m.line - 1].strip()[:80]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"one or more of: {', '.join(TARGETS)}")
    parser.add_argument("--all", action="store_true", help="every core module")
    parser.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    parser.add_argument("--only", type=int, nargs="+", help="run only these mutant numbers (one module)")
    args = parser.parse_args(argv)
    names = list(TARGETS) if args.all else args.modules
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        prefix = f"unknown {', '.join(unknown)}; " if unknown else ""
        parser.error(f"{prefix}name modules among {', '.join(TARGETS)} or pass --all")
    if args.list:
        for name in names:
            list_mutants(name)
        return 0
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        root = Path(tmp)
        copy_repository(root)
        _check_imports_copy(root)
        preload()
        results = [mutate_target(name, root, set(args.only or ())) for name in names]
    for r in results:
        print(f"{r.name:<12} {r.total:>4} mutants {r.killed:>4} killed {len(r.survivors):>3} survived {r.rate:>5.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
