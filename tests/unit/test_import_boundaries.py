"""The layer rules, checked on the source: only ``kube.py`` imports kubernetes, only
``netlink.py`` imports pyroute2, and the pure core imports neither (nor any non-core
module of the library). Also checked at run time in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
LIB = ROOT / "xcluster_cni_lib"
CORE = LIB / "core"
SOURCES = sorted([*LIB.rglob("*.py"), *(ROOT / "wrappers").rglob("*.py")])
ONLY = {"kubernetes": LIB / "kube.py", "pyroute2": LIB / "netlink.py"}


def package_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (also inside functions), with
    relative imports resolved and ``importlib.import_module("x")``/``__import__("x")``."""
    tree = ast.parse(path.read_text(), str(path))
    package = package_of(path) if package is None else package
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (
                    isinstance(node.func, ast.Name)
                    and node.func.id in ("__import__", "import_module")
                )
            )
        ):
            found.add(node.args[0].value)
    return found


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\n"
        "def f():\n"
        "    from pyroute2 import IPRoute\n"
        "    import importlib\n"
        "    importlib.import_module('kubernetes.client')\n"
        "from . import values\n"
        "from ..netlink import x\n"
    )
    found = imported_modules(probe, "xcluster_cni_lib.core")
    assert {"os", "pyroute2", "kubernetes.client", "xcluster_cni_lib.core.values"} <= found
    assert "xcluster_cni_lib.netlink" in found


@pytest.mark.parametrize("package", sorted(ONLY))
def test_only_one_module_imports_each_heavy_package(package: str) -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in SOURCES
        if p != ONLY[package] and any(top(m) == package for m in imported_modules(p))
    ]
    assert offenders == [], f"only {ONLY[package].name} may import {package}"


def test_core_is_pure() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        for module in imported_modules(path):
            heavy = top(module) in ONLY
            outside = top(module) == "xcluster_cni_lib" and not module.startswith(
                "xcluster_cni_lib.core"
            )
            if heavy or outside:
                offenders.append(f"{path.name}: {module}")
    assert offenders == []


def test_core_loads_nothing_heavy_at_run_time() -> None:
    modules = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")
    code = (
        "import sys\n"
        + "".join(f"import xcluster_cni_lib.core.{m}\n" for m in modules)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('kubernetes', 'pyroute2', 'urllib3', 'yaml'))\n"
        + "bad += sorted(m for m in sys.modules if m.startswith('xcluster_cni_lib.') "
        "and not m.startswith('xcluster_cni_lib.core'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""
