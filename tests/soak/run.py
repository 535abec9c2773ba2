"""``make soak``: the soak and fault campaign (needs root).

    .venv/bin/python tests/soak/run.py --short            # CI: about 3-4 minutes
    .venv/bin/python tests/soak/run.py --duration 1800    # the full 30-minute run

Prints the seed first (rerun with ``--seed``), a line per phase, every invariant
violation, and the report as JSON at the end (also written to ``--report``). Exits 1
when any invariant was violated. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
from types import FrameType

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.soak.campaign import Options, run_campaign

SHORT = {
    "duration": 100.0,
    "rate": 30.0,
    "burst": 24,
    "bulk": 150,
    "churn_window": (0.5, 2.0),
    "overlay_share": 0.4,
    "policy_share": 0.7,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--short", action="store_true", help="the CI variant (about 3-4 minutes)")
    p.add_argument("--duration", type=float, help="seconds of faults and churn (default 1800)")
    p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    p.add_argument("--nodes", type=int, default=2000, help="nodes in the API server (default 2000)")
    p.add_argument("--real", type=int, default=2, help="node namespaces with a daemon (default 2)")
    p.add_argument("--rate", type=float, help="API events per second while churning")
    p.add_argument("--burst", type=int, help="parallel ADDs (then DELs) per IPAM burst")
    p.add_argument(
        "--overlay-share",
        type=float,
        help="the last share of --duration run with OVERLAY=vxlan and MASQUERADE=true "
        "(default 0.3; 0: never)",
    )
    p.add_argument(
        "--policy-share",
        type=float,
        help="the last share of --duration run with NETWORK_POLICY=true, pods and policy "
        "churn (default 0.5; 0: never)",
    )
    p.add_argument("--report", help="also write the JSON report to this file")
    p.add_argument("--workdir", help="keep logs here (default: a temp dir, removed on success)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir even on success")
    p.add_argument("--render", metavar="REPORT", help="print a saved report as Markdown and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        from tests.soak.render import render

        with open(args.render) as f:
            print(render(json.load(f)))
        return 0
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"soak seed: {seed}", flush=True)
    opts = Options(
        seed=seed,
        nodes=args.nodes,
        real=args.real,
        workdir=args.workdir,
        keep=args.keep,
        log=lambda line: print(line, flush=True),
    )
    if args.short:
        for key, value in SHORT.items():
            setattr(opts, key, value)
    for key in ("duration", "rate", "burst", "overlay_share", "policy_share"):
        if getattr(args, key) is not None:
            setattr(opts, key, getattr(args, key))

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    report = run_campaign(opts)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text)
    print(
        f"soak seed {seed}: {report['violations_total']} invariant violations "
        f"({report['violations_by_kind']})",
        flush=True,
    )
    return 1 if report["violations_total"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
