"""The layer rules are folder rules, checked on the source: each folder of
``xcluster_cni_lib`` may import only the standard library, the folders listed for it in
``RULES`` and the third-party packages listed for it. Only ``sources/`` imports
kubernetes, only ``kernel/`` imports pyroute2. Also checked at run time in a fresh
interpreter for the pure core."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
LIB = ROOT / "xcluster_cni_lib"
CORE = LIB / "core"
WRAPPERS = {
    "xcluster_cni_daemon": ROOT / "wrappers" / "daemon" / "xcluster_cni_daemon",
    "xcluster_cni_ipam": ROOT / "wrappers" / "ipam" / "xcluster_cni_ipam",
}
SOURCES = sorted([*LIB.rglob("*.py"), *(p for w in WRAPPERS.values() for p in w.rglob("*.py"))])

# folder -> (library folders it may import besides itself, third-party packages it may import)
RULES: dict[str, tuple[set[str], set[str]]] = {
    "core": (set(), {"attrs"}),
    "support": ({"core"}, {"yaml"}),
    "plugin": ({"core", "support"}, set()),
    "kernel": ({"core", "support"}, {"pyroute2"}),
    "sources": ({"core", "support"}, {"kubernetes", "urllib3", "yaml"}),
    "sync": ({"core", "support"}, {"attrs", "prometheus_client"}),
    "daemon": ({"core", "support", "kernel", "sources", "sync", "plugin"}, {"attrs"}),
    "install": ({"core", "support", "kernel", "sources"}, {"attrs", "yaml"}),
    "testing": ({"core", "support", "sync"}, {"attrs"}),
    "lab": ({"core", "support", "testing"}, {"attrs", "pytest"}),
    "tools": ({"core", "support", "kernel", "sources", "daemon", "install"}, {"attrs"}),
}
# wrapper package -> library folders it may import (third-party: none)
WRAPPER_RULES = {
    "xcluster_cni_daemon": set(RULES) - {"testing"},
    "xcluster_cni_ipam": {"plugin"},
}
HEAVY = {"kubernetes": "sources", "pyroute2": "kernel"}


def package_of(path: Path) -> str:
    for name, base in WRAPPERS.items():
        if base in path.parents:
            return ".".join([name, *path.relative_to(base).with_suffix("").parts[:-1]])
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


def violations(path: Path, own: str, folders: set[str], third: set[str]) -> list[str]:
    """The imports of ``path`` that its folder's rule does not allow."""
    package = package_of(path)
    return [
        f"{path.relative_to(ROOT)}: {m}" for m in violations_of(path, package, own, folders, third)
    ]


def test_every_module_lives_in_a_folder_with_a_rule() -> None:
    loose = [p.name for p in LIB.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], "modules belong in a folder whose name says their layer"
    assert {p.name for p in LIB.iterdir() if p.is_dir() and p.name != "__pycache__"} <= set(
        RULES
    ) | {"data"}


@pytest.mark.parametrize("folder", sorted(RULES))
def test_folder_imports_only_what_its_rule_allows(folder: str) -> None:
    folders, third = RULES[folder]
    bad = [
        v
        for p in sorted((LIB / folder).rglob("*.py"))
        for v in violations(p, folder, folders, third)
    ]
    assert bad == []


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_wrappers_import_only_the_library(wrapper: str) -> None:
    bad = [
        v
        for p in sorted(WRAPPERS[wrapper].rglob("*.py"))
        for v in violations(p, wrapper, WRAPPER_RULES[wrapper], set())
    ]
    assert bad == []


@pytest.mark.parametrize("package", sorted(HEAVY))
def test_only_one_folder_imports_each_heavy_package(package: str) -> None:
    home = LIB / HEAVY[package]
    offenders = [
        str(p.relative_to(ROOT))
        for p in SOURCES
        if home not in p.parents and any(top(m) == package for m in imported_modules(p))
    ]
    assert offenders == [], f"only {HEAVY[package]}/ may import {package}"


def test_the_rules_catch_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import json\nimport attrs\nfrom xcluster_cni_lib.kernel import netlink\n")
    folders, third = RULES["plugin"]
    found = set(violations_of(probe, "xcluster_cni_lib.plugin", "plugin", folders, third))
    assert {"attrs", "xcluster_cni_lib.kernel.netlink"} <= found
    assert "json" not in found


def violations_of(
    path: Path, package: str, own: str, folders: set[str], third: set[str]
) -> list[str]:
    out = []
    for module in sorted(imported_modules(path, package)):
        first = top(module)
        if first in sys.stdlib_module_names or first == "__future__":
            continue
        if first == "xcluster_cni_lib":
            parts = module.split(".")
            if len(parts) > 1 and (LIB / parts[1]).is_dir() and parts[1] not in folders | {own}:
                out.append(module)
        elif first != own and first not in third:
            out.append(module)
    return out


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
