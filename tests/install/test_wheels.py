"""The three distributions install only their own import packages: the library
``xcluster-cni-lib`` (``xcluster_cni_lib``), the command ``xcluster-cni``
(``xcluster_cni_daemon``) and the plugins ``xcluster-cni-ipam`` (``xcluster_cni_ipam``).
Nothing generic (``wrappers``, ``tests``, ``bench``) lands in site-packages, and each
console script comes with the distribution that owns it.

Builds the wheels from a copy of the sources with ``pip wheel --no-deps``: pip fetches
only the build backend (setuptools, usually from its cache), never the dependencies."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# distribution -> (source dir, its top-level import packages, its console scripts)
DISTRIBUTIONS = {
    "xcluster_cni_lib": (".", {"xcluster_cni_lib"}, set()),
    "xcluster_cni": ("wrappers/daemon", {"xcluster_cni_daemon"}, {"xcluster-cni"}),
    "xcluster_cni_ipam": ("wrappers/ipam", {"xcluster_cni_ipam"}, {"kube-node", "node-annotation"}),
}


def _copy_sources(dest: Path) -> None:
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.pyc")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "xcluster_cni_lib", dest / "xcluster_cni_lib", ignore=skip)
    shutil.copytree(ROOT / "wrappers", dest / "wrappers", ignore=skip)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("wheels")
    _copy_sources(src)
    for directory, _, _ in DISTRIBUTIONS.values():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--quiet",
                "--wheel-dir",
                str(out),
                str(src / directory),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    found = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    assert set(found) == set(DISTRIBUTIONS)
    return found


def _record(wheel: zipfile.ZipFile) -> list[str]:
    (record,) = [n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")]
    return [line.split(",")[0] for line in wheel.read(record).decode().splitlines() if line]


def top_level(wheel_path: Path) -> set[str]:
    """The names a wheel puts at the top of site-packages (its RECORD), without its
    ``.dist-info`` directory."""
    with zipfile.ZipFile(wheel_path) as wheel:
        return {
            path.split("/")[0].removesuffix(".py")
            for path in _record(wheel)
            if not path.split("/")[0].endswith((".dist-info", ".data"))
        }


def console_scripts(wheel_path: Path) -> set[str]:
    with zipfile.ZipFile(wheel_path) as wheel:
        names = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
        if not names:
            return set()
        parser = configparser.ConfigParser()
        parser.read_string(wheel.read(names[0]).decode())
    return set(parser["console_scripts"]) if parser.has_section("console_scripts") else set()


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_a_wheel_holds_only_its_own_import_package(wheels: dict[str, Path], dist: str) -> None:
    _, packages, _ = DISTRIBUTIONS[dist]
    assert top_level(wheels[dist]) == packages


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_each_command_comes_with_its_own_distribution(wheels: dict[str, Path], dist: str) -> None:
    _, _, scripts = DISTRIBUTIONS[dist]
    assert console_scripts(wheels[dist]) == scripts


def test_the_command_wheels_depend_on_the_library(wheels: dict[str, Path]) -> None:
    for dist in ("xcluster_cni", "xcluster_cni_ipam"):
        with zipfile.ZipFile(wheels[dist]) as wheel:
            (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
            requires = [
                line
                for line in wheel.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")
            ]
        assert requires == ["Requires-Dist: xcluster-cni-lib==0.1.0"], dist


def test_the_check_sees_a_generic_package(tmp_path: Path) -> None:
    """What the old layout shipped (a top-level ``wrappers`` package) is caught."""
    wheel_path = tmp_path / "old-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        wheel.writestr("wrappers/__init__.py", "")
        wheel.writestr("xcluster_cni_lib/__init__.py", "")
        wheel.writestr(
            "old-0.1.0.dist-info/RECORD",
            "wrappers/__init__.py,,\nxcluster_cni_lib/__init__.py,,\nold-0.1.0.dist-info/RECORD,,\n",
        )
    assert top_level(wheel_path) == {"wrappers", "xcluster_cni_lib"}
