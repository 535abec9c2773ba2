"""The per-network cache of resolved host-local ranges (``kube-node.json``).

Format (version 1)::

    {"format": 1, "plugin": "kube-node", "node": "worker-1",
     "inputs": {"annotation": null, "nodesFile": null, "rangeStart": null, ...},
     "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]],
     "digest": "<crc32 of the ranges>"}

Written atomically (temp file in the same directory, fsync, rename) after the ranges were
fully validated (``resolve.validate_ranges``); when read, checked for shape and against the
digest, so a truncated, corrupted or hand-edited cache is rebuilt, without ``ipaddress``
(which costs milliseconds of imports on the pod-start path).

Housekeeping on a miss: a cache is removed only by the call that wrote it (its file
identity, ``remove_cache``), and temp files of killed writers are swept after a minute
(``sweep_temp_files``).
"""

from __future__ import annotations

import os
import zlib

from xcluster_cni_lib.plugin import fastjson as json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT = 1
RANGE_KEYS = ("subnet", "rangeStart", "rangeEnd", "gateway")

# A range set with its family: (4 or 6, [range, ...]), each range a host-local range object.
RangeSet = tuple[int, list[dict[str, str]]]


class InvalidCache(ValueError):
    """The cache file exists but cannot be used; the message says why."""


def digest(ranges: object) -> str:
    """The checksum stored with the ranges."""
    return f"{zlib.crc32(json.dumps(ranges).encode()):08x}"


def family_of(subnet: str) -> int:
    """The family of a canonical subnet string."""
    return 6 if ":" in subnet else 4


def _checked(ranges: object) -> list[RangeSet]:
    if not isinstance(ranges, list) or not 1 <= len(ranges) <= 2:
        raise ValueError("ranges must be a list of one or two range sets")
    out: list[RangeSet] = []
    for rangeset in ranges:
        if not isinstance(rangeset, list) or not rangeset:
            raise ValueError("a range set must be a non-empty list")
        families = set()
        for r in rangeset:
            if not isinstance(r, dict) or not isinstance(r.get("subnet"), str):
                raise ValueError("a range needs a subnet")
            if not set(r) <= set(RANGE_KEYS) or not all(isinstance(v, str) for v in r.values()):
                raise ValueError(f"a range has only string {RANGE_KEYS}")
            families.add(family_of(r["subnet"]))
        if len(families) != 1 or any(f in families for f, _ in out):
            raise ValueError("one range set per family, each of one family")
        out.append((families.pop(), rangeset))
    return out


def read_cache(path: str, *, plugin: str) -> tuple[dict[str, Any], list[RangeSet]] | None:
    """The cache document and its ranges; None when there is no cache file.

    Raises InvalidCache when the file is unreadable, not JSON or not a valid cache.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InvalidCache(f"cannot read {path}: {e}") from None
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a format-{FORMAT} cache object")
        if doc.get("plugin") != plugin:
            raise ValueError(f"written by plugin {doc.get('plugin')!r}, not {plugin!r}")
        if not isinstance(doc.get("inputs"), dict) or not isinstance(doc.get("node"), str):
            raise ValueError("missing inputs or node")
        ranges = _checked(doc.get("ranges"))
        if doc.get("digest") != digest(doc["ranges"]):
            raise ValueError("the digest does not match the ranges")
        return doc, ranges
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidCache(f"invalid cache {path}: {e}") from None


# A file's identity: (device, inode). A cache this process wrote is recognised by it.
FileId = tuple[int, int]

STALE_TEMP_SECONDS = 60.0  # a temp file this old was left by a killed writer


def write_cache(path: str, doc: dict[str, Any]) -> FileId | None:
    """Write the cache atomically, creating its directory; its identity, or None when
    the file already held exactly this document (left alone: another ADD wrote it)."""
    from xcluster_cni_lib.support.atomicfile import write_atomic

    if not write_atomic(path, json.dumps(doc).encode(), make_dirs=True, skip_unchanged=True):
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:  # already replaced or removed by another call
        return None
    return (st.st_dev, st.st_ino)


def remove_cache(path: str, written: FileId | None) -> bool:
    """Remove the cache only if it is still the file this process wrote (``written``):
    a concurrent call's newer cache is never removed. The file is first renamed aside
    (atomic), so nothing written in between is lost; returns whether it was removed."""
    if written is None:
        return False
    from xcluster_cni_lib.support.atomicfile import temp_name

    aside = temp_name(os.path.dirname(path) or ".")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        st = os.stat(aside)
        if (st.st_dev, st.st_ino) == written:
            return True
        try:  # noqa: SIM105 (contextlib is not imported on the pod-start path)
            os.link(aside, path)  # someone else's: put it back, unless a newer one is there
        except FileExistsError:
            pass
        return False
    finally:
        os.unlink(aside)


def sweep_temp_files(directory: str, *, older_than: float = STALE_TEMP_SECONDS) -> list[str]:
    """Remove the temp files of atomic writes in ``directory`` older than ``older_than``
    seconds (left by a writer killed before its rename); their names."""
    from xcluster_cni_lib.support.atomicfile import remove_stale_temp_files

    return remove_stale_temp_files(directory, older_than=older_than)
