"""A "who am I" UDP service for the lab: the server answers every datagram with the
source address it saw, so a test can tell whether traffic left a node masqueraded
(the server sees the node's address) or not (it sees the pod's).

The server runs in any lab namespace (a node, a pod, the outside host) and listens on
both families; it is a plain Python process that the lab's tear-down kills with the
namespace's other processes.
"""

from __future__ import annotations

import subprocess
import sys
import time

from xcluster_cni_lib.core.values import IPAddress
from xcluster_cni_lib.lab.shell import in_ns, run
from xcluster_cni_lib.lab.spec import LabError

WHOAMI_PORT = 7777

_SERVER = """
import select, socket, sys
port = int(sys.argv[1])
socks = []
for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(64)
        s.sendto(peer[0].encode(), peer)
"""

_CLIENT = """
import socket, sys
address, port, deadline = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
family = socket.AF_INET6 if ":" in address else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(0.3)
import time
end = time.monotonic() + deadline
while time.monotonic() < end:
    try:
        s.sendto(b"?", (address, port))
        print(s.recvfrom(256)[0].decode())
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
"""


def start_server(ns: str, port: int = WHOAMI_PORT, timeout: float = 10.0) -> subprocess.Popen[str]:
    """Start the server in namespace ``ns``; returns once it listens."""
    proc = subprocess.Popen(
        in_ns(ns, [sys.executable, "-I", "-S", "-c", _SERVER, str(port)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    line = proc.stdout.readline()  # "ready", or "" when it died
    if line.strip() != "ready" or time.monotonic() > end:
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise LabError(f"whoami server in {ns} did not start: {err.strip()[-300:]}")
    return proc


def ask(
    ns: str, address: IPAddress | str, port: int = WHOAMI_PORT, deadline: float = 3.0
) -> str | None:
    """From namespace ``ns``, ask the server at ``address`` which source address it saw;
    None when no answer came within ``deadline`` seconds."""
    argv = [sys.executable, "-I", "-S", "-c", _CLIENT, str(address), str(port), str(deadline)]
    proc = run(ns, argv, check=False, timeout=deadline + 10)
    return proc.stdout.strip() or None if proc.returncode == 0 else None
