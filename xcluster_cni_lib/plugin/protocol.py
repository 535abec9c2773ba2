"""CNI protocol facts (spec 0.3.0 to 1.1.0) as plain functions and constants.

Kept free of ``typing``/``attrs`` imports at run time: this module is on the pod-start path.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # (collections.abc imports all of collections)
    from collections.abc import Mapping
    from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"

# Error codes of the spec; 100 and above are ours (see docs/ipam.md).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NODE_UNUSABLE = 100  # the own node has no usable subnets (no pod CIDRs, annotation missing/bad)
NODE_NOT_FOUND = 101  # the own node cannot be determined or does not exist
NO_DELEGATE = 102  # host-local is not on CNI_PATH
NO_FAMILY = 103  # nothing left to assign for this pod (ipv4-namespaces and no IPv6 subnet)
DELEGATE_FAILED = 104  # host-local failed without a CNI error object
INTERNAL_ERROR = 105  # a bug: an unexpected exception (see the log)

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# Env vars each command needs besides CNI_COMMAND (CNI_PATH is checked where a delegate is run).
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}


class CniError(Exception):
    """A failure to report as one CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_key(version: str) -> tuple[int, ...]:
    """``"0.4.0"`` -> ``(0, 4, 0)``; raises ValueError on anything else."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdecimal() for p in parts):
        raise ValueError(f"not a CNI version: {version!r}")
    return tuple(int(p) for p in parts)


def check_version(version: object) -> str:
    """The config's ``cniVersion`` if we support it, else CniError code 1 (or 7 if absent)."""
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "network config has no cniVersion string", repr(version))
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version!r}",
            "supported versions: " + ", ".join(SUPPORTED_VERSIONS),
        )
    return version


def version_info(cni_version: str = LATEST_VERSION) -> dict[str, Any]:
    """The VERSION answer."""
    return {"cniVersion": cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def check_env(command: str, env: Mapping[str, str]) -> None:
    """Raise CniError code 4 naming every env var the command needs but lacks."""
    missing = [k for k in _REQUIRED_ENV[command] if not env.get(k)]
    if missing:
        raise CniError(INVALID_ENV, "missing environment variables: " + ", ".join(missing))


def parse_command(env: Mapping[str, str]) -> str:
    """``CNI_COMMAND``, validated (code 4 when missing or unknown)."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENV, "missing environment variables: CNI_COMMAND")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND {command!r}")
    return command


def parse_cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS`` (``K=V;K=V``, any order) as a dict. Empty items are skipped; an item
    without ``=`` is an error (code 4) unless ``IgnoreUnknown`` is set, then it is skipped."""
    out: dict[str, str] = {}
    bad: list[str] = []
    for item in text.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            bad.append(item)
            continue
        out[key] = value
    if bad and out.get("IgnoreUnknown", "").lower() not in ("1", "true"):
        first, cut = bad[0][:200], text[:200]
        raise CniError(INVALID_ENV, f"CNI_ARGS: malformed item {first!r}", cut)
    return out


def convert_result(result: Mapping[str, Any], cni_version: str) -> dict[str, Any]:
    """An IPAM result (0.3.0 to 1.1.0 shape) in the shape of ``cni_version``.

    0.3.x/0.4.0 carry ``ips[].version``; 1.x do not. IPAM results never carry
    ``interfaces`` or ``ips[].interface``.
    """
    legacy = version_key(cni_version) < (1, 0, 0)
    ips = []
    for ip in result.get("ips") or ():
        entry = {k: v for k, v in ip.items() if k not in ("interface", "version")}
        if legacy:
            address = str(entry.get("address", ""))
            entry = {"version": "6" if ":" in address.partition("/")[0] else "4", **entry}
        ips.append(entry)
    out: dict[str, Any] = {"cniVersion": cni_version, "ips": ips}
    for key in ("routes", "dns"):
        if key in result:
            out[key] = result[key]
    return out
