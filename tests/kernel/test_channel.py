"""``channel.run_in_netns`` and ``open_socket`` against real network namespaces."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from xcluster_cni_lib.kernel.channel import NetlinkError, open_socket, run_in_netns
from xcluster_cni_lib.kernel.nftevents import open_socket as open_nft_socket
from xcluster_cni_lib.testing.netns import del_netns, unique_name

pytestmark = pytest.mark.root


def _netns_inode() -> int:
    """The network namespace of the calling thread (not the process's)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_result_returned_from_the_namespace(netns: str) -> None:
    before = _netns_inode()

    def where() -> tuple[int, str]:
        return _netns_inode(), threading.current_thread().name

    inode, name = run_in_netns(netns, where, name="test-where")
    assert inode == os.stat(f"/var/run/netns/{netns}").st_ino
    assert inode != before
    assert name == "test-where"
    assert _netns_inode() == before  # the caller never moved


def test_exception_raised_in_the_caller(netns: str) -> None:
    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_in_netns(netns, fail, name="test-fail")


def test_missing_namespace_is_never_created() -> None:
    missing = unique_name("miss")
    try:
        with pytest.raises(FileNotFoundError):
            run_in_netns(missing, lambda: 1, name="test-missing")
        with pytest.raises(NetlinkError, match="does not exist") as caught:
            open_socket(missing)
        assert caught.value.errno == errno.ENOENT
        with pytest.raises(FileNotFoundError):
            open_nft_socket(missing)
        assert not os.path.exists(f"/var/run/netns/{missing}")
    finally:
        del_netns(missing)


def test_open_socket_in_namespace(netns: str) -> None:
    sock = open_socket(netns)
    try:
        assert sock.getsockname()[0] > 0  # bound: the kernel gave it a port id
    finally:
        sock.close()
