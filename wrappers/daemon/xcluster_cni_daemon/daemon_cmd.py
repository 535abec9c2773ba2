"""``xcluster-cni daemon``: the router daemon. Reads its settings from the environment,
each overridable by a flag, then runs ``xcluster_cni_lib.daemon.service`` until SIGTERM/SIGINT.
Settings are documented in ``docs/daemon.md``."""

from __future__ import annotations

import argparse
import os

from xcluster_cni_lib.daemon.config import SETTINGS, ConfigError, load_config


def _flag(name: str) -> str:
    return "--" + name.lower().replace("_", "-")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``daemon`` subcommand."""
    parser = subparsers.add_parser(
        "daemon",
        help="watch nodes and keep the routes to their pod CIDRs in the kernel",
        description="Watch nodes and keep the routes to their pod CIDRs in the kernel. "
        "Every flag overrides the environment variable of the same name.",
    )
    for name, text in SETTINGS.items():
        parser.add_argument(
            _flag(name), dest=name, metavar=name, default=None, help=f"{text} [${name}]"
        )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the daemon with ``args`` (parsed flags) over the environment."""
    from xcluster_cni_lib.daemon import service as daemon
    from xcluster_cni_lib.support import jsonlog
    from xcluster_cni_lib.support.memory import restart_with_c_malloc

    flags = {name: getattr(args, name, None) for name in SETTINGS}
    try:
        config = load_config(os.environ, flags)
    except ConfigError as e:
        jsonlog.setup("info")
        jsonlog.get_logger("xcluster_cni_lib.daemon.service").error(
            f"invalid configuration: {e}", variable=e.name, value=e.value
        )
        return 1

    if config.network_policy:
        # the policy agent's compiles fragment pymalloc's arenas: objects go to the C
        # allocator instead, whose freed pages the agent gives back (docs/daemon.md)
        restart_with_c_malloc()
    jsonlog.setup(config.log_level)
    try:
        return daemon.run(config)
    except Exception as e:  # start-up failed (API config, netlink socket, HTTP port in use)
        jsonlog.get_logger("xcluster_cni_lib.daemon.service").error(
            "start failed", error=f"{type(e).__name__}: {e}"
        )
        return 1
