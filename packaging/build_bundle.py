"""Build the self-contained plugin bundle: a CPython copy, the project and its runtime
dependencies, and a small C launcher, in one directory that runs on a host without Python.

Usage: ``python packaging/build_bundle.py OUT_DIR`` with the interpreter whose environment
holds the project (the image's build stage, or the test virtualenv). Needs a C compiler, the
interpreter's headers and ``libpython`` (a shared build), and ``patchelf``.

Layout of OUT_DIR::

    xcluster-cni-plugin          the launcher (ELF); kube-node/node-annotation link to it
    lib/                         libpython and the shared libraries the bundle needs,
                                 except the C library itself (the host provides glibc)
    lib/python3/                 the standard library (compiled) and lib-dynload/
    site-packages/               the project, its dependencies, _xcluster_entry.py
    BUNDLE.json                  version and content digest, written last

Every ``.pyc`` is compiled with unchecked hashes, so copying the bundle (which changes file
times) never makes Python recompile or look at the sources.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement

HERE = Path(__file__).resolve().parent
LAUNCHER = "xcluster-cni-plugin"
PROJECT = "xcluster-cni-lib"
# Our own distributions: the library and the two wrappers (the daemon command, the IPAM
# plugins), each copied from its source folder.
PROJECTS = ("xcluster-cni-lib", "xcluster-cni", "xcluster-cni-ipam")
PROJECT_SOURCES = {
    "xcluster_cni_lib": Path("."),
    "xcluster_cni_daemon": Path("wrappers/daemon"),
    "xcluster_cni_ipam": Path("wrappers/ipam"),
}
PROJECT_PACKAGES = tuple(PROJECT_SOURCES)
# Parts of the standard library a CNI plugin never uses.
STDLIB_SKIP = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "pydoc_data",
    "distutils",
    "venv",
    "__phello__",
}
# Extension modules of the standard library that pull in big libraries a plugin never needs.
DYNLOAD_SKIP = re.compile(
    r"^(_tkinter|_curses|_curses_panel|readline|_dbm|_gdbm|nis|_sqlite3|ossaudiodev|spwd"
    r"|_test\w*|_ctypes_test|xxlimited\w*|_xxtestfuzz|xxsubtype)\."
)
# Parts of the dependencies the plugins never import (the asyncio client of `kubernetes`).
SITE_SKIP = ("kubernetes/aio/", "kubernetes/test/", "kubernetes/e2e_test/")
# The C library and its loader come from the host; everything else is bundled.
GLIBC = re.compile(
    r"^(linux-vdso|ld-linux|libc|libm|libpthread|libdl|librt|libutil|libresolv|libanl)\b"
)


def _ignore_stdlib(directory: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n.endswith((".pyc", ".pyo")) or n == "__pycache__"}
    if Path(directory).name == "lib-dynload":
        skip |= {n for n in names if DYNLOAD_SKIP.match(n)}
    if Path(directory) == Path(sysconfig.get_paths()["stdlib"]):
        skip |= {n for n in names if n in STDLIB_SKIP or n.startswith("config-")}
    return skip


def copy_stdlib(out: Path) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dest = out / "lib" / "python3"
    shutil.copytree(stdlib, dest, ignore=_ignore_stdlib, symlinks=False)
    dynload = Path(sysconfig.get_config_var("DESTSHARED") or stdlib / "lib-dynload")
    if not (dest / "lib-dynload").exists():
        shutil.copytree(dynload, dest / "lib-dynload", ignore=_ignore_stdlib)
    return dest


def _requirement_names(dist: md.Distribution) -> list[str]:
    """Requirements of a distribution that apply here (markers evaluated, no extras)."""
    names = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def dependency_closure(*projects: str) -> list[md.Distribution]:
    """The installed distributions the projects need at run time (not themselves)."""
    own = {re.sub(r"[-_.]+", "-", p).lower() for p in projects}
    seen: dict[str, md.Distribution] = {}
    todo = [n for p in projects for n in _requirement_names(md.distribution(p))]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen or key in own:
            continue
        dist = md.distribution(name)
        seen[key] = dist
        todo.extend(_requirement_names(dist))
    return list(seen.values())


def copy_site_packages(out: Path) -> Path:
    dest = out / "site-packages"
    dest.mkdir(parents=True)
    for dist in dependency_closure(*PROJECTS):
        for file in dist.files or []:
            parts = file.parts
            if parts[0].startswith("..") or "__pycache__" in parts or file.suffix == ".pyc":
                continue
            if file.as_posix().startswith(SITE_SKIP):
                continue
            src = Path(str(dist.locate_file(file)))
            if src.is_file():
                target = dest / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    root = Path(__file__).resolve().parent.parent
    for package, source in PROJECT_SOURCES.items():
        shutil.copytree(
            root / source / package,
            dest / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    shutil.copy2(HERE / "entry.py", dest / "_xcluster_entry.py")
    return dest


def compile_tree(path: Path, *, sourceless: bool) -> None:
    """Compile every module under ``path``. ``sourceless``: ``.pyc`` beside each module
    and the ``.py`` removed (half the size; tracebacks keep file names and line numbers);
    else ``__pycache__`` with unchecked hashes next to the kept sources."""
    ok = compileall.compile_dir(
        str(path),
        quiet=2,
        workers=0,
        legacy=sourceless,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    if not ok:
        # Some packages ship files that are not valid Python 3 (templates, py2 leftovers);
        # those are never imported. Import errors would show in the bundle's own tests.
        print(f"note: some files under {path} did not compile", file=sys.stderr)
    if sourceless:
        for source in path.rglob("*.py"):
            if source.with_suffix(".pyc").is_file():
                source.unlink()


def build_launcher(out: Path, cc: str) -> Path:
    include = sysconfig.get_paths()["include"]
    libdir = sysconfig.get_config_var("LIBDIR")
    version = sysconfig.get_config_var("LDVERSION") or sysconfig.get_python_version()
    exe = out / LAUNCHER
    subprocess.run(
        [
            cc,
            "-O2",
            "-s",
            f"-I{include}",
            str(HERE / "launcher.c"),
            "-o",
            str(exe),
            f"-L{libdir}",
            f"-lpython{version}",
            "-Wl,-rpath,$ORIGIN/lib",
            "-Wl,--enable-new-dtags",
        ],
        check=True,
    )
    return exe


def _needed(path: Path) -> dict[str, Path]:
    """Shared libraries an ELF file loads (soname -> path on this machine), without glibc."""
    proc = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    found: dict[str, Path] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*(\S+) => (/\S+)", line)
        if m and not GLIBC.match(m.group(1)):
            found[m.group(1)] = Path(m.group(2))
    return found


def _elf_files(root: Path) -> list[Path]:
    files = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    files.append(path)
    return files


def bundle_libraries(out: Path) -> None:
    """Copy every non-glibc library the launcher and the extension modules need into lib/,
    and point each extension module's RUNPATH there."""
    libdir = out / "lib"
    libdir.mkdir(exist_ok=True)
    todo = _elf_files(out)
    done: set[str] = set()
    while todo:
        elf = todo.pop()
        for soname, src in _needed(elf).items():
            if soname in done:
                continue
            done.add(soname)
            target = libdir / soname
            if not target.exists():
                shutil.copy2(src, target)
                target.chmod(0o755)
                todo.append(target)
    for elf in _elf_files(out):
        if elf.name == LAUNCHER:
            continue
        rel = os.path.relpath(libdir, elf.parent)
        runpath = "$ORIGIN" if rel == "." else f"$ORIGIN/{rel}"
        subprocess.run(["patchelf", "--set-rpath", runpath, str(elf)], check=True)


def tree_digest(root: Path) -> str:
    """A digest of every file's relative path, mode bits and content (BUNDLE.json excluded)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "BUNDLE.json"):
        rel = path.relative_to(root).as_posix()
        h.update(f"{rel}\0{path.stat().st_mode & 0o111:o}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _entry_plugins() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("_xcluster_entry", HERE / "entry.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugins: dict[str, str] = module.PLUGINS
    return plugins


def build(out: Path, *, cc: str = "cc") -> dict[str, object]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    stdlib = copy_stdlib(out)
    site = copy_site_packages(out)
    compile_tree(stdlib, sourceless=True)
    for entry in site.iterdir():
        if entry.is_dir() and entry.name not in PROJECT_PACKAGES:
            compile_tree(entry, sourceless=True)
        elif entry.suffix == ".py" and entry.name != "_xcluster_entry.py":
            py_compile.compile(
                str(entry),
                cfile=str(entry.with_suffix(".pyc")),
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
            entry.unlink()
    for package in PROJECT_PACKAGES:  # our own code keeps its sources for tracebacks
        compile_tree(site / package, sourceless=False)
    py_compile.compile(
        str(site / "_xcluster_entry.py"),
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    build_launcher(out, cc)
    # libpython first, from this interpreter's LIBDIR: resolving it through the search
    # path could find another build of the same soname (a system Python of another
    # patch level), whose symbols the copied extension modules do not match.
    soname = sysconfig.get_config_var("INSTSONAME")
    (out / "lib").mkdir(exist_ok=True)
    shutil.copy2(Path(sysconfig.get_config_var("LIBDIR")) / soname, out / "lib" / soname)
    bundle_libraries(out)
    info: dict[str, object] = {
        "version": md.version(PROJECT),
        "python": sysconfig.get_python_version(),
        "plugins": sorted(_entry_plugins()),
        "digest": tree_digest(out),
    }
    (out / "BUNDLE.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="bundle directory to create (replaced)")
    parser.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler")
    args = parser.parse_args()
    info = build(args.out, cc=args.cc)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
