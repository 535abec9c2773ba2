"""Mutation testing of the pure core and the CNI protocol module: ``make mutation``.

Each mutant is one small change to one module of ``xcluster_cni_lib/core/`` or
``xcluster_cni_lib/plugin/protocol.py`` (a flipped comparison, ``and``/``or`` swapped, an
integer constant moved by one, ``True``/``False`` swapped, a ``not`` dropped, an
arithmetic or bit operator swapped, a return value replaced by ``None``, a statement
dropped). A mutant is *killed* when the fast unit tests fail on it (or it does not import,
or it hangs past the timeout) and *survives* when they all pass. See docs/testing.md.

The checkout is never modified: every worker works in its own copy of the tree in a
temporary directory, writes one mutant into it, runs pytest (``-x``) in a forked child
(pytest and hypothesis are imported once per worker, not once per mutant), then writes the
original back. Hypothesis runs derandomized, without its example database and without
shrinking, so a run is reproducible and a failing example is not minimised for nothing.

Known equivalent mutants (no test can tell them apart from the original) are listed in
``equivalent.txt`` next to this file, one key a line; they are reported but left out of
the score. ``--sample N`` tests N mutants drawn with ``--seed`` (default: every mutant).

Usage::

    python tests/mutation/run.py [--jobs 2] [--sample N --seed 1] [--fail-under 95]
    python tests/mutation/run.py --list            # every mutant's key
    python tests/mutation/run.py --show KEY        # the mutant's diff
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TARGETS = [
    *sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "xcluster_cni_lib" / "core").glob("*.py")
        if p.name != "__init__.py"
    ),
    "xcluster_cni_lib/plugin/protocol.py",
]
# The fast, pure tests that exercise the targets (no root, no network namespace).
# test_import_boundaries only reads import statements, which are never mutated.
TEST_FILES = [
    *sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "tests" / "unit").glob("test_*.py")
        if p.name != "test_import_boundaries.py"
    ),
    "tests/ipam/test_cni_protocol.py",
]

# Written into each copy's root: reproducible, no database, no shrinking.
CONFTEST = """\
from hypothesis import Phase, settings

settings.register_profile(
    "mutation",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.load_profile("mutation")
"""

# -- the mutants ---------------------------------------------------------------------

_COMPARE_SWAP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BINOP_SWAP: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.Mult: ast.FloorDiv,
}
# Statements that "drop a statement" replaces by ``pass``.
_DROPPABLE = (
    ast.Expr,
    ast.Assign,
    ast.AugAssign,
    ast.AnnAssign,
    ast.Raise,
    ast.If,
    ast.For,
    ast.While,
    ast.With,
    ast.Try,
    ast.Delete,
    ast.Continue,
    ast.Break,
)

# A mutation: (label, function that edits the tree in place at the located node).
Edit = Callable[[ast.AST, ast.AST, str, int | None], None]


def _set(parent: ast.AST, field: str, index: int | None, new: ast.AST) -> None:
    if index is None:
        setattr(parent, field, new)
    else:
        getattr(parent, field)[index] = new


def _skipped(tree: ast.Module) -> set[int]:
    """ids of nodes never mutated: annotations, docstrings, asserts, TYPE_CHECKING blocks
    and TypeVars (typing only: ``from __future__ import annotations`` everywhere)."""
    skip: set[int] = set()

    def all_of(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign):
            all_of(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            all_of(node.returns)
        if isinstance(node, ast.Assert):
            all_of(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            all_of(node)
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "TYPE_CHECKING" for t in node.targets
        ):
            all_of(node)
        if isinstance(node, ast.Assign) and any(  # only `import *` reads `__all__`
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            all_of(node)
        if (  # `_T = TypeVar(...)`: only annotations use it, and they are not evaluated
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "TypeVar"
        ):
            all_of(node)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                all_of(body[0])
    return skip


def _walk(tree: ast.Module) -> Iterator[tuple[ast.AST, str, int | None, ast.AST, str]]:
    """Every (parent, field, index, node, qualname), in a deterministic order."""

    def visit(node: ast.AST, qual: str) -> Iterator[tuple[ast.AST, str, int | None, ast.AST, str]]:
        for field, value in ast.iter_fields(node):
            children = (
                list(enumerate(value))
                if isinstance(value, list)
                else [(None, value)]
                if isinstance(value, ast.AST)
                else []
            )
            for index, child in children:
                if not isinstance(child, ast.AST):
                    continue
                inner = qual
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    inner = f"{qual}.{child.name}" if qual else child.name
                yield node, field, index, child, inner
                yield from visit(child, inner)

    yield from visit(tree, "")


def _mutations(node: ast.AST, parent: ast.AST, field: str) -> Iterator[tuple[str, Edit]]:
    """The mutations of one node: (label, edit)."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            swap = _COMPARE_SWAP.get(type(op))
            if swap is not None:

                def edit(
                    p: ast.AST, n: ast.AST, f: str, x: int | None, i: int = i, s: Any = swap
                ) -> None:
                    assert isinstance(n, ast.Compare)
                    n.ops[i] = s()

                yield f"{type(op).__name__}->{swap.__name__}", edit
    elif isinstance(node, ast.BoolOp):
        other = ast.Or if isinstance(node.op, ast.And) else ast.And

        def edit_bool(p: ast.AST, n: ast.AST, f: str, x: int | None, o: Any = other) -> None:
            assert isinstance(n, ast.BoolOp)
            n.op = o()

        yield f"{type(node.op).__name__}->{other.__name__}", edit_bool
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):

        def edit_not(p: ast.AST, n: ast.AST, f: str, x: int | None) -> None:
            assert isinstance(n, ast.UnaryOp)
            _set(p, f, x, n.operand)

        yield "drop not", edit_not
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAP:
        new_op = _BINOP_SWAP[type(node.op)]

        def edit_bin(p: ast.AST, n: ast.AST, f: str, x: int | None, o: Any = new_op) -> None:
            assert isinstance(n, ast.BinOp)
            n.op = o()

        yield f"{type(node.op).__name__}->{new_op.__name__}", edit_bin
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):

        def edit_flip(p: ast.AST, n: ast.AST, f: str, x: int | None) -> None:
            assert isinstance(n, ast.Constant)
            n.value = not n.value

        yield f"{node.value}->{not node.value}", edit_flip
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        number: int = node.value
        for delta in (1, -1):

            def edit_int(p: ast.AST, n: ast.AST, f: str, x: int | None, d: int = delta) -> None:
                assert isinstance(n, ast.Constant) and type(n.value) is int
                n.value = int(n.value) + d

            yield f"int {number}->{number + delta}", edit_int
    value = node.value if isinstance(node, ast.Return) else None
    if value is not None and not (isinstance(value, ast.Constant) and value.value is None):

        def edit_ret(p: ast.AST, n: ast.AST, f: str, x: int | None) -> None:
            assert isinstance(n, ast.Return)
            n.value = ast.Constant(None)

        yield "return None", edit_ret
    bare = (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) or (  # `...`
        # `x: T` in a function only declares a type (in a class body it makes an attrs field)
        isinstance(node, ast.AnnAssign)
        and node.value is None
        and not isinstance(parent, ast.ClassDef)
    )
    if isinstance(node, _DROPPABLE) and field in ("body", "orelse", "finalbody") and not bare:

        def edit_drop(p: ast.AST, n: ast.AST, f: str, x: int | None) -> None:
            _set(p, f, x, ast.Pass())

        yield "drop statement", edit_drop


class Mutant:
    """One mutation of one target: ``key`` names it stably (no line numbers)."""

    def __init__(self, path: str, text: str, position: int, key: str, line: int) -> None:
        self.path, self.text, self.position, self.key, self.line = path, text, position, key, line

    def source(self) -> str:
        """The mutated module's text."""
        tree = ast.parse(self.text)
        count = 0
        skip = _skipped(tree)
        for parent, field, index, node, _qual in _walk(tree):
            if id(node) in skip:
                continue
            for _label, edit in _mutations(node, parent, field):
                if count == self.position:
                    edit(parent, node, field, index)
                    ast.fix_missing_locations(tree)
                    return ast.unparse(tree) + "\n"
                count += 1
        raise LookupError(self.key)


def find_mutants(paths: list[str], root: Path = ROOT) -> list[Mutant]:
    """Every mutant of ``paths`` (relative to ``root``), from one reading of each file."""
    out: list[Mutant] = []
    for path in paths:
        text = (root / path).read_text()
        tree = ast.parse(text)
        skip = _skipped(tree)
        seen: dict[str, int] = {}
        position = 0
        for parent, field, _index, node, qual in _walk(tree):
            if id(node) in skip:
                continue
            for label, _edit in _mutations(node, parent, field):
                segment = ast.get_source_segment(text, node) or ""
                snippet = " ".join(segment.split())[:60].rstrip()
                base = f"{path}::{qual or '<module>'}: {label}: {snippet}"
                seen[base] = seen.get(base, 0) + 1
                key = base if seen[base] == 1 else f"{base} #{seen[base]}"
                out.append(Mutant(path, text, position, key, getattr(node, "lineno", 0)))
                position += 1
    return out


def diff(mutant: Mutant) -> str:
    before = ast.unparse(ast.parse(mutant.text)).splitlines()
    after = mutant.source().splitlines()
    lines = difflib.unified_diff(
        before, after, mutant.path, mutant.path + " (mutant)", n=1, lineterm=""
    )
    return "\n".join(lines)


# -- running -------------------------------------------------------------------------


def make_copy(base: Path, source: Path = ROOT) -> Path:
    """A copy of what the tests need: the library, the tests, the examples, pyproject.toml."""
    copy = Path(tempfile.mkdtemp(prefix="worker-", dir=base))
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.pyc")
    for folder in ("xcluster_cni_lib", "tests", "examples"):  # examples: test_nodesfile
        shutil.copytree(source / folder, copy / folder, ignore=ignore)
    shutil.copy2(source / "pyproject.toml", copy / "pyproject.toml")
    (copy / "conftest.py").write_text(CONFTEST)
    return copy


def ordered_tests(path: str, root: Path) -> list[str]:
    """The test files, those that import the mutated module first (they kill fastest)."""
    module = path.removesuffix(".py").replace("/", ".")
    package, _, name = module.rpartition(".")

    def imports(test: str) -> bool:
        text = (root / test).read_text()
        return module in text or f"from {package} import {name}" in text

    return sorted(TEST_FILES, key=lambda t: (not imports(t), t))


def worker(copy: Path, jobs_file: Path, timeout: float) -> None:
    """Run the mutants listed in ``jobs_file`` in ``copy``; one JSON line per mutant."""
    import hypothesis  # noqa: F401  (imported once here, inherited by every fork)
    import pytest

    sys.dont_write_bytecode = True
    jobs = json.loads(jobs_file.read_text())
    for job in jobs:
        target = copy / job["path"]
        original = target.read_text()
        if job["source"] is not None:
            target.write_text(job["source"])
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: run pytest on the mutated copy
            try:
                os.chdir(copy)
                sys.path.insert(0, str(copy))
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *job["tests"]])
                os._exit(int(code))
            except BaseException:
                os._exit(99)
        status = "timeout"
        while time.monotonic() - started < timeout:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(wait_status)
                # 1: a test failed; 2: collection failed; 4: a conftest failed to import (the
                # arguments are those of the clean run, which passed)
                status = {0: "survived", 1: "killed", 2: "killed", 4: "killed"}.get(
                    code, f"error {code}"
                )
                break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        target.write_text(original)
        result = {"key": job["key"], "status": status, "seconds": time.monotonic() - started}
        print(json.dumps(result), flush=True)


def run_jobs(
    copies: list[Path], jobs: list[dict[str, Any]], timeout: float
) -> list[dict[str, Any]]:
    """Spread ``jobs`` over one worker process per copy; collect their results."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    total = len(jobs)

    def run(copy: Path, share: list[dict[str, Any]]) -> None:
        jobs_file = copy / "jobs.json"
        jobs_file.write_text(json.dumps(share))
        cmd = [sys.executable, str(HERE / "run.py"), "--worker", str(copy), str(jobs_file)]
        cmd += ["--timeout", str(timeout)]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=copy) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                result = json.loads(line)
                with lock:
                    results.append(result)
                    if result["status"] != "killed" or len(results) % 25 == 0:
                        print(
                            f"[{len(results)}/{total}] {result['status']}: {result['key']}",
                            flush=True,
                        )

    threads = [
        threading.Thread(target=run, args=(copy, jobs[i :: len(copies)]))
        for i, copy in enumerate(copies)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--sample", type=int, default=0, help="test N mutants (default: all)")
    parser.add_argument("--seed", type=int, default=1, help="the sample's seed (default 1)")
    parser.add_argument("--fail-under", type=float, default=95.0, help="minimum score, percent")
    parser.add_argument(
        "--timeout", type=float, default=0, help="seconds per mutant (default: 5x the clean run)"
    )
    parser.add_argument("--only", default="", help="only mutants whose key contains this text")
    parser.add_argument("--json", type=Path, help="write every result to this file")
    parser.add_argument("--list", action="store_true", help="list the mutants' keys and exit")
    parser.add_argument("--show", metavar="KEY", help="print one mutant's diff and exit")
    parser.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker(args.worker[0], args.worker[1], args.timeout)
        return 0

    if args.list or args.show:
        return inspect(args)
    with tempfile.TemporaryDirectory(prefix="xcluster-mutation-") as tmp:
        # one snapshot of the checkout (others may be editing it), cloned for every worker
        first = make_copy(Path(tmp))
        copies = [first] + [make_copy(Path(tmp), first) for _ in range(1, max(1, args.jobs))]
        return run(args, copies)


def inspect(args: argparse.Namespace) -> int:
    """``--list`` and ``--show``, on the checkout."""
    mutants = [m for m in find_mutants(TARGETS) if args.only in m.key]
    if args.list:
        for m in mutants:
            print(m.key)
        return 0
    match = [m for m in mutants if m.key == args.show]
    if not match:
        print(f"no mutant {args.show!r}", file=sys.stderr)
        return 2
    print(diff(match[0]))
    return 0


def run(args: argparse.Namespace, copies: list[Path]) -> int:
    """Test the mutants, on the snapshot ``copies[0]``; print and return the verdict."""
    snapshot = copies[0]
    mutants = [m for m in find_mutants(TARGETS, snapshot) if args.only in m.key]
    equivalent = {
        line.strip()
        for line in (HERE / "equivalent.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    stale = equivalent - {m.key for m in find_mutants(TARGETS, snapshot)}
    if args.sample and args.sample < len(mutants):
        mutants = sorted(random.Random(args.seed).sample(mutants, args.sample), key=lambda m: m.key)
    print(f"{len(mutants)} mutants in {len(TARGETS)} modules; tests: {', '.join(TEST_FILES)}")

    # the clean run must pass, and a module that cannot import must be caught
    probe = TARGETS[0]
    checks: list[dict[str, Any]] = [
        {"key": "clean", "path": probe, "source": None, "tests": TEST_FILES},
        {
            "key": "broken",
            "path": probe,
            "source": "raise ImportError('mutation probe')\n",
            "tests": TEST_FILES,
        },
    ]
    started = time.monotonic()
    clean = run_jobs(copies[:1], checks[:1], 600)
    clean_seconds = time.monotonic() - started
    broken = run_jobs(copies[:1], checks[1:], 600)
    if clean[0]["status"] != "survived":  # show why
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
        subprocess.run([*cmd, *TEST_FILES], cwd=copies[0], check=False)
    if clean[0]["status"] != "survived" or broken[0]["status"] != "killed":
        print(
            f"the clean tests must pass ({clean[0]['status']}) and a broken module "
            f"must fail them ({broken[0]['status']})",
            file=sys.stderr,
        )
        return 2
    timeout = args.timeout or max(30.0, 5 * clean_seconds)
    print(f"clean run {clean_seconds:.1f} s; timeout per mutant {timeout:.0f} s; {args.jobs} jobs")
    by_key = {m.key: m for m in mutants}
    jobs = [
        {
            "key": m.key,
            "path": m.path,
            "source": m.source(),
            "tests": ordered_tests(m.path, snapshot),
        }
        for m in mutants
    ]
    started = time.monotonic()
    results = run_jobs(copies, jobs, timeout)
    elapsed = time.monotonic() - started

    results.sort(key=lambda r: r["key"])
    killed = [r for r in results if r["status"] in ("killed", "timeout")]
    survived = [r for r in results if r["status"] == "survived"]
    errors = [r for r in results if r not in killed and r not in survived]
    known = [r for r in survived if r["key"] in equivalent]
    real = [r for r in survived if r["key"] not in equivalent]
    scored = len(results) - len(known) - len(errors)
    score = 100.0 * len(killed) / scored if scored else 100.0
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    for r in real:
        m = by_key[r["key"]]
        print(f"\nSURVIVED {m.key} (line {m.line})\n{diff(m)}")
    for r in errors:
        print(f"ERROR {r['status']}: {r['key']}")
    for key in sorted(stale):
        print(f"note: equivalent.txt lists a mutant that no longer exists: {key}")
    print(
        f"\n{len(results)} mutants in {elapsed:.0f} s: {len(killed)} killed "
        f"({sum(r['status'] == 'timeout' for r in results)} by timeout), "
        f"{len(real)} survived, {len(known)} known equivalent, {len(errors)} errors"
    )
    print(
        f"score {score:.1f}% (killed / (mutants - known equivalent - errors)); "
        f"raw {100.0 * len(killed) / max(1, len(results)):.1f}%"
    )
    return 0 if score >= args.fail_under and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
