"""rtnetlink sockets: opening one (in a network namespace if asked), and a request
channel that sends batches and dumps and reads their answers.

The only module of the project that imports ``pyroute2``, and only to enter a named
network namespace (``pyroute2.netns.setns``); everything on the wire goes through a
plain ``AF_NETLINK`` socket with the ``struct`` codec of ``codec``.

Entering a namespace is done in a short-lived helper thread (``run_in_netns``, which the
other kernel modules use too): ``setns(2)`` only moves the calling thread, a socket stays
in the namespace it was created in, and the thread ends right after, so nothing else in
the process ever runs in the wrong namespace (no fork, unlike
``pyroute2.netns.create_socket``, which matters in a multi-threaded daemon).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Final, TypeVar

from xcluster_cni_lib.kernel import codec as rc
from xcluster_cni_lib.support import jsonlog

log = jsonlog.get_logger(__name__)

T = TypeVar("T")

NETLINK_ROUTE: Final = 0
SO_RCVBUFFORCE: Final = 33
SO_SNDBUFFORCE: Final = 32

#: Upper bounds of one batch (one ``send``): bytes of requests and number of messages.
BATCH_BYTES: Final = 64 * 1024
BATCH_MESSAGES: Final = 1024
#: Receive buffer asked for; every acknowledgement occupies ~1 KiB of it until read.
RCVBUF_BYTES: Final = 4 * 1024 * 1024
#: How long to wait for the acknowledgements of one batch before giving up on them.
ACK_TIMEOUT: Final = 10.0
#: NLM_F_DUMP_INTR: the kernel's mark on a dump message that a concurrent change disturbed.
NLM_F_DUMP_INTR: Final = 0x10


class NetlinkError(OSError):
    """A netlink request as a whole failed (not a single route of a batch)."""


def group_mask(*groups: int) -> int:
    """The ``bind`` mask of these multicast group numbers (``RTNLGRP_*``)."""
    mask = 0
    for g in groups:
        mask |= 1 << (g - 1)
    return mask


def _new_socket(groups: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


def run_in_netns(netns: str, fn: Callable[[], T], *, name: str) -> T:
    """``fn()`` run in a fresh thread (called ``name``) that entered network namespace
    ``netns`` (a name under /var/run/netns or a path); its result, or its exception (or
    the one entering the namespace raised, FileNotFoundError when there is no such
    namespace) raised again in the caller's thread.

    The namespace is never created (``setns`` with flags=0), and only that thread ever
    runs in it: it ends when ``fn`` returns, so what ``fn`` opened there (a socket, a
    /proc/sys/net file) stays there while the rest of the process never moves."""
    # imported here: pyroute2 costs ~0.1 s to import and is only needed to enter a namespace
    from pyroute2 import netns as pyroute2_netns

    result: list[T] = []
    failure: list[BaseException] = []

    def enter_and_run() -> None:
        try:
            pyroute2_netns.setns(netns, flags=0)  # flags=0: never create it, only enter it
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    helper = threading.Thread(target=enter_and_run, name=name, daemon=True)
    helper.start()
    helper.join()
    if failure:
        raise failure[0]
    return result[0]


def open_socket(netns: str | None = None, *, groups: int = 0) -> socket.socket:
    """A NETLINK_ROUTE socket in namespace ``netns`` (a name under /var/run/netns or a
    path), subscribed to the multicast ``groups`` mask. The namespace must exist."""
    if netns is None:
        return _new_socket(groups)
    try:
        return run_in_netns(netns, lambda: _new_socket(groups), name=f"netns-socket-{netns}")
    except FileNotFoundError:
        raise NetlinkError(errno.ENOENT, f"network namespace {netns!r} does not exist") from None
    except Exception as exc:
        raise NetlinkError(
            getattr(exc, "errno", None) or errno.EIO,
            f"cannot open a netlink socket in network namespace {netns!r}: {exc}",
        ) from exc


def set_option(sock: socket.socket, level: int, option: int, value: int) -> bool:
    """``setsockopt``; False (and no exception) when the kernel refuses it."""
    try:
        sock.setsockopt(level, option, value)
    except OSError:
        return False
    return True


def grow_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for a ``size``-byte receive buffer, past ``rmem_max`` when allowed (root)."""
    if not set_option(sock, socket.SOL_SOCKET, SO_RCVBUFFORCE, size):
        set_option(sock, socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _configure_request_socket(sock: socket.socket) -> None:
    # Kernel error text with each error, acks without the echoed request, filtered dumps.
    set_option(sock, rc.SOL_NETLINK, rc.NETLINK_EXT_ACK, 1)
    set_option(sock, rc.SOL_NETLINK, rc.NETLINK_CAP_ACK, 1)
    set_option(sock, rc.SOL_NETLINK, rc.NETLINK_GET_STRICT_CHK, 1)
    grow_receive_buffer(sock, RCVBUF_BYTES)
    if not set_option(sock, socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * BATCH_BYTES):
        set_option(sock, socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * BATCH_BYTES)


class Channel:
    """A request socket with a sequence counter, a receive buffer and dump support."""

    def __init__(self, netns: str | None) -> None:
        self.sock = open_socket(netns)
        _configure_request_socket(self.sock)
        self.sock.settimeout(ACK_TIMEOUT)
        self.buf = bytearray(1 << 20)
        self._seq = int.from_bytes(os.urandom(2), "big") << 8
        rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # keep the acks of one batch well inside the receive buffer (~1 KiB each)
        self.batch_messages = max(16, min(BATCH_MESSAGES, rcvbuf // 2048))

    def next_seq(self, count: int = 1) -> int:
        """The first of ``count`` consecutive sequence numbers, never crossing zero."""
        seq = self._seq
        self._seq = (seq + count) & 0xFFFFFFFF
        if self._seq < seq:  # wrapped: never hand out a range crossing zero
            self._seq = count
            seq = 1
        return seq

    def close(self) -> None:
        self.sock.close()

    def request(self, request: bytes, seq: int) -> list[tuple[memoryview, rc.Header]]:
        """Send one request numbered ``seq``; its answers up to the ack or error (a plain
        GET is answered by one message and no ack). Raises NetlinkError on an error
        answer. Answers to earlier requests (other sequence numbers) are skipped."""
        self.sock.send(request)
        answers: list[tuple[memoryview, rc.Header]] = []
        while True:
            data = self.sock.recv(1 << 16)
            view = memoryview(data)
            for header in rc.iter_messages(view, len(data)):
                if header.seq != seq:
                    continue
                if header.msg_type == rc.NLMSG_ERROR:
                    ack = rc.parse_ack(view, header)
                    if ack.error:
                        raise NetlinkError(ack.error, ack.message or os.strerror(ack.error))
                    return answers
                answers.append((view, header))
                if not header.flags & rc.NLM_F_ACK and header.msg_type != rc.NLMSG_DONE:
                    return answers

    def dump(self, request: bytes, seq: int) -> Iterator[tuple[memoryview, rc.Header]]:
        """Send a dump request and yield its messages until NLMSG_DONE.

        Every part of the dump is received before the first is decoded: the kernel makes
        the next part only when the previous one is read, and a table that changes
        between two parts can disturb the dump, so the parts are read back to back.
        Raises NetlinkError on an error answer or an interrupted dump (the caller retries).
        """
        self.sock.send(request)
        parts: list[bytes] = []
        done = False
        while not done:
            data = self.sock.recv(len(self.buf))
            parts.append(data)
            for header in rc.iter_messages(data, len(data)):
                if header.seq != seq:
                    continue
                if header.msg_type == rc.NLMSG_DONE or (
                    header.msg_type == rc.NLMSG_ERROR and rc.parse_ack(data, header).error
                ):
                    done = True
                    break
        interrupted = False
        for data in parts:
            view = memoryview(data)
            for header in rc.iter_messages(view, len(data)):
                if header.seq != seq:
                    continue  # a late answer to an earlier request
                if header.msg_type == rc.NLMSG_DONE:
                    if interrupted:
                        raise NetlinkError(errno.EAGAIN, "dump interrupted by concurrent changes")
                    return
                if header.msg_type == rc.NLMSG_ERROR:
                    ack = rc.parse_ack(view, header)
                    if ack.error:
                        raise NetlinkError(ack.error, ack.message or os.strerror(ack.error))
                    continue
                if header.flags & NLM_F_DUMP_INTR:
                    interrupted = True
                yield view, header

    def exchange(
        self,
        out: bytearray,
        length: int,
        base: int,
        count: int,
        *,
        replies: dict[int, rc.RouteMessage] | None = None,
    ) -> list[tuple[int, str]]:
        """Send ``count`` requests numbered from ``base`` (the last one asking for an
        acknowledgement); (errno, kernel message) per request, matched by sequence
        number. Route messages answering a request (lookups) go to ``replies`` by index.

        The kernel answers every failed request and handles a send's messages in order
        before ``send`` returns, so once the last one is acknowledged every error of the
        batch has been read and the requests without an answer succeeded. If the kernel
        drops answers (receive buffer overrun), the unanswered requests are reported as
        EIO errors, to be retried."""
        failed: dict[int, tuple[int, str]] = {}
        self.sock.send(memoryview(out)[:length])
        view = memoryview(self.buf)
        last = count - 1
        done = overrun = False
        while not done:
            try:
                if overrun:
                    n = self.sock.recv_into(self.buf, 0, socket.MSG_DONTWAIT)
                else:
                    n = self.sock.recv_into(self.buf)
            except (BlockingIOError, TimeoutError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # answers were dropped; the rest are already queued (rtnetlink
                    # answers before send returns), so drain without waiting
                    log.warning("netlink answers lost", reason="receive buffer overrun")
                    overrun = True
                    continue
                raise
            for header in rc.iter_messages(view, n):
                index = (header.seq - base) & 0xFFFFFFFF
                if index >= count:
                    continue
                if header.msg_type == rc.RTM_NEWROUTE and replies is not None:
                    replies[index] = rc.parse_route(view, header)
                    continue
                if header.msg_type != rc.NLMSG_ERROR:
                    continue
                ack = rc.parse_ack(view, header)
                if ack.error:
                    failed[index] = (ack.error, ack.message)
                if index == last:
                    done = True
        ok = (0, "")
        if done and not overrun:
            return [failed.get(i, ok) for i in range(count)]
        lost = (errno.EIO, "the kernel's answer was lost (receive buffer overrun); will retry")
        return [failed.get(i, lost) for i in range(count)]
