"""The API-server double over HTTPS, for the credential tests of both API clients.

``make_pki(directory)`` makes, with ``openssl``, a CA (``ca.crt``), a server certificate
for ``127.0.0.1`` signed by it, a client certificate signed by it, and a second CA
(``other-ca.crt``) that signs nothing we use: a kubeconfig naming it must be refused
even when the system trusts the real CA. ``TlsApiServerDouble(pki, ...)`` is an
``ApiServerDouble`` whose listener speaks TLS (``client_certs=True``: it requires a
client certificate from the CA); ``write_kubeconfig`` embeds the CA.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

from tests.apiserver import ApiServerDouble

EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path) -> Path:
    """CA, server and client certificates (and an unrelated CA) in ``d``."""
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", *EC, "-nodes", "-days", "2", "-subj", f"/CN=test-{ca}",
            "-keyout", str(d / f"{ca}.key"), "-out", str(d / f"{ca}.crt"),
        )  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        _openssl(
            "req", *EC, "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
        )  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n" if ext else "basicConstraints=CA:FALSE\n")
        _openssl(
            "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
            "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"),
        )  # fmt: skip
    return d


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


class TlsApiServerDouble(ApiServerDouble):
    """The double behind TLS (see the module docstring)."""

    def __init__(self, pki: Path, *, client_certs: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pki = pki
        self.client_certs = client_certs

    def start(self) -> TlsApiServerDouble:
        super().start()
        server = self._server
        assert server is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki / "server.crt", self.pki / "server.key")
        if self.client_certs:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.pki / "ca.crt")
        # Same descriptor, so the serving thread's selector keeps working; no client has
        # connected yet. The handshake happens in the connection's own thread.
        server.socket = ctx.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        return self

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def write_kubeconfig(self, path: str | os.PathLike[str]) -> str:
        super().write_kubeconfig(path)
        doc = json.loads(Path(path).read_text())
        doc["clusters"][0]["cluster"]["certificate-authority-data"] = b64(self.pki / "ca.crt")
        Path(path).write_text(json.dumps(doc, indent=1))
        return os.fspath(path)
