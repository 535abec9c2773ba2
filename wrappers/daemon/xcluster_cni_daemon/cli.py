"""``xcluster-cni``: the router daemon and its tools, as subcommands.

Each module in ``SUBCOMMAND_MODULES`` has ``register(subparsers) -> None``, which adds
its parsers and sets ``func`` (``func(args) -> int``, the exit code) with
``set_defaults``. Every module is imported to build the parser (so ``--help`` lists all
subcommands): keep their top-level imports light and import heavy things (kubernetes,
pyroute2, the daemon) inside ``func``; a test checks that ``xcluster-cni cidr`` loads
neither kubernetes nor pyroute2.

Exit codes: 0 ok; 1 bad input or failure, with exactly one line on stderr saying what was
wrong (usage errors included: no multi-line usage dump). A subcommand may return other
codes of its own (documented in ``docs/cli.md``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from xcluster_cni_lib import __version__
from xcluster_cni_lib.core.errors import XclusterError

PROG = "xcluster-cni"

SUBCOMMAND_MODULES = [
    "xcluster_cni_daemon.tools",
    "xcluster_cni_daemon.lab_cmd",
    "xcluster_cni_daemon.install_cmd",
    "xcluster_cni_daemon.daemon_cmd",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except UsageError as e:
        _say(str(e))
        return 1
    except XclusterError as e:
        _say(f"{PROG}: error: {e}")
        return 1
    except OSError as e:  # a socket, a file, a netlink request that failed
        if isinstance(e, BrokenPipeError):  # `xcluster-cni ... | head`: not our failure
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        _say(f"{PROG}: error: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:  # --help and --version exit 0 from inside argparse
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1


if __name__ == "__main__":
    sys.exit(main())
