"""The soak and fault campaign (``make soak``; see docs/reliability.md)."""
