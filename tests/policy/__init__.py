"""NetworkPolicy end to end, in the lab: in-process probes between namespaces
(``probe``), the API-server double inside the lab with its pods registered (``labapi``),
and the expected-versus-measured reachability matrix (``matrix``). The suite itself is
``tests/e2e/test_network_policy.py``."""
