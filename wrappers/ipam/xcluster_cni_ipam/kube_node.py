"""The ``kube-node`` IPAM plugin: host-local ranges from the own Node's pod CIDRs (or a
subnet annotation). All logic lives in ``xcluster_cni_lib.plugin``; see docs/ipam.md."""

from __future__ import annotations


def main() -> int:
    from xcluster_cni_lib.plugin.verbs import main as run_main

    return run_main("kube-node")


if __name__ == "__main__":
    raise SystemExit(main())
