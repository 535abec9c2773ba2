"""The ``node-annotation`` IPAM plugin: host-local ranges from JSON in an annotation of
the own Node. All logic lives in ``xcluster_cni_lib.plugin``; see docs/ipam.md."""

from __future__ import annotations


def main() -> int:
    from xcluster_cni_lib.plugin.verbs import main as run_main

    return run_main("node-annotation")


if __name__ == "__main__":
    raise SystemExit(main())
