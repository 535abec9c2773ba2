"""Benchmarks of xcluster-cni (``make bench``; see ``docs/performance.md``).

Each module measures one thing and returns plain JSON-able dicts; ``bench/run.py`` runs
them all, prints the table, writes ``bench/results/*.json`` and the plots.
"""
