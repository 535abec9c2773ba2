"""``xcluster-cni``: the router daemon and its tools, as subcommands.

Each module in ``SUBCOMMAND_MODULES`` has ``register(subparsers) -> None``, which adds
its parsers and sets ``func`` (``func(args) -> int``, the exit code) with
``set_defaults``. Every module is imported to build the parser (so ``--help`` lists all
subcommands): keep their top-level imports light and import heavy things (kubernetes,
pyroute2, the daemon) inside ``func``; a test checks that ``xcluster-cni cidr`` loads
neither kubernetes nor pyroute2.

Exit codes: 0 ok; 1 bad input or failure, with exactly one line on stderr saying what was
wrong (usage errors included: no multi-line usage dump); 130 on Ctrl-C; 141 (128 +
SIGPIPE, what a shell reports for a command killed by a closed pipe) when stdout was
closed before everything was written (``xcluster-cni ... | head``), with nothing on
stderr. A subcommand may return other codes of its own (documented in ``docs/cli.md``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from xcluster_cni_lib import __version__
from xcluster_cni_lib.core.errors import XclusterError

PROG = "xcluster-cni"
EXIT_CLOSED_STDOUT = 128 + signal.SIGPIPE  # 141, as for `yes | head -1` in a shell

SUBCOMMAND_MODULES = [
    "xcluster_cni_daemon.tools",
    "xcluster_cni_daemon.lab_cmd",
    "xcluster_cni_daemon.install_cmd",
    "xcluster_cni_daemon.daemon_cmd",
    "xcluster_cni_daemon.doctor_cmd",
]


class UsageError(Exception):
    """A command line argparse rejected."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 1 (see ``main``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see --help)")


def build_parser(modules: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser with the subcommands of ``modules`` (default ``SUBCOMMAND_MODULES``)."""
    parser = Parser(
        prog=PROG,
        description="xcluster-cni: routes between Kubernetes nodes' pod CIDRs, and tools.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(
        title="subcommands", dest="command", metavar="COMMAND", required=True
    )
    for name in modules or SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _say(message: str) -> None:
    print(" ".join(message.split()), file=sys.stderr)


def _stdout_closed() -> bool:
    """Whether nobody reads our stdout any more (a pipe whose reader exited)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError):  # no real file descriptor (captured in a test)
        return False
    return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit code."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # a reader that went away shows up here, not at exit
        return code
    except BrokenPipeError as e:
        if not _stdout_closed():  # a socket's broken pipe is a failure like any other
            _say(f"{PROG}: error: {e}")
            return 1
        # `xcluster-cni ... | head`: not our failure, say nothing; later writes (the
        # interpreter's final flush) go nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_STDOUT


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except BrokenPipeError:
        raise  # main decides whether it was stdout
    except UsageError as e:
        _say(str(e))
        return 1
    except XclusterError as e:
        _say(f"{PROG}: error: {e}")
        return 1
    except OSError as e:  # a socket, a file, a netlink request that failed
        _say(f"{PROG}: error: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:  # --help and --version exit 0 from inside argparse
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1


if __name__ == "__main__":
    sys.exit(main())
