"""The one reader of Kubernetes credentials: a kubeconfig file (or a ``:``-separated list,
merged as kubectl does) or the in-cluster service account, turned into one frozen
``ClusterAccess``.

Both API clients start from it: the IPAM plugin's small client (``plugin.kubelite``)
and the daemon's ``kubernetes`` client (``sources.kube``), so they accept and refuse the
same files, with the same ``KubeconfigError`` naming the file and the key.

Understood: the current context (or the only one), ``server``,
``certificate-authority(-data)``, ``insecure-skip-tls-verify`` (a real boolean: the
string ``"false"`` is refused, not taken as true), ``tls-server-name``, ``token``,
``tokenFile``, ``username``/``password``, ``client-certificate(-data)`` and
``client-key(-data)``. Refused with a clear message: ``exec`` and ``auth-provider``
credential plugins and ``proxy-url``. A configured CA is the only one trusted; without
one the system's CAs are (as kubectl does).

Standard library only, light to import (the plugin reads this on a pod start): JSON is
parsed by the ``loads`` given (default ``json.loads``), PyYAML is imported only for a
kubeconfig that is not JSON, ``ssl`` only by ``ssl_context``.
"""

from __future__ import annotations

import os

from xcluster_cni_lib.core.errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Mapping
    from typing import Any

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeconfigError(InputError):
    """A kubeconfig or the in-cluster service account cannot be used. ``source`` names the
    file (``kubeconfig /path`` or ``service account /dir``), ``key`` what in it is wrong."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


_FIELDS = (
    "source",
    "server",
    "ca_file",
    "ca_data",
    "insecure",
    "tls_server_name",
    "client_cert_file",
    "client_cert_data",
    "client_key_file",
    "client_key_data",
    "token",
    "token_file",
    "username",
    "password",
    "keys",
)
_SECRET = frozenset(("client_key_data", "token", "password"))


class ClusterAccess:
    """Where the API server is and how to authenticate to it (frozen).

    File names are absolute. ``keys`` maps a field name to the kubeconfig key it came
    from, for error messages. ``authorization()`` reads ``token_file`` on every call.
    """

    __slots__ = _FIELDS
    source: str
    server: str
    ca_file: str | None
    ca_data: bytes | None
    insecure: bool
    tls_server_name: str | None
    client_cert_file: str | None
    client_cert_data: bytes | None
    client_key_file: str | None
    client_key_data: bytes | None
    token: str | None
    token_file: str | None
    username: str | None
    password: str | None
    keys: Mapping[str, str]

    def __init__(self, *, source: str, server: str, **fields: Any) -> None:
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown ClusterAccess fields: {sorted(unknown)}")
        values = {"source": source, "server": server, "insecure": False, "keys": {}, **fields}
        for name in _FIELDS:
            object.__setattr__(self, name, values.get(name))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ClusterAccess is frozen")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterAccess):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in _FIELDS)

    def __hash__(self) -> int:
        return hash((self.source, self.server))

    def __repr__(self) -> str:
        shown = (
            f"{n}={'[redacted]' if n in _SECRET else getattr(self, n)!r}"
            for n in _FIELDS
            if getattr(self, n) is not None and n != "keys"
        )
        return f"ClusterAccess({', '.join(shown)})"

    @property
    def https(self) -> bool:
        return self.server.startswith("https:")

    def key(self, field: str) -> str:
        return self.keys.get(field, field)

    def authorization(self) -> str | None:
        """The ``Authorization`` header value: a bearer token (``token_file`` read now),
        basic credentials, or None."""
        token = self.token
        if self.token_file is not None:
            token = _read(self.token_file, self.source, self.key("token_file")).decode().strip()
            if not token:
                raise KubeconfigError(self.source, self.key("token_file"), "the file is empty")
        if token:
            return f"Bearer {token}"
        if self.username and self.password:
            import base64

            pair = f"{self.username}:{self.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        return None


_URL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")


def split_server(
    server: str, *, source: str = "kubeconfig", key: str = "server"
) -> tuple[bool, str, int, str]:
    """``https://host:port/prefix`` -> (https, host, port, prefix); KubeconfigError if not."""
    scheme, sep, rest = server.partition("://")
    hostport, slash, path = rest.partition("/")
    if not sep or scheme not in ("http", "https") or not hostport or "@" in hostport:
        raise KubeconfigError(source, key, f"{server!r} is not an http(s) URL")
    if hostport.startswith("["):
        host, _, after = hostport[1:].partition("]")
        port = after[1:] if after.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    if not host or (port and not port.isdecimal()) or (port and not 0 < int(port) < 65536):
        raise KubeconfigError(source, key, f"{server!r} has a bad host or port")
    https = scheme == "https"
    prefix = ("/" + path).rstrip("/") if slash else ""
    return https, host, int(port) if port else (443 if https else 80), prefix


def _read(path: str, source: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KubeconfigError(source, key, f"cannot read {path}: {e.strerror or e}") from None


# -- kubeconfig files ---------------------------------------------------------------------


def _load_doc(path: str, loads: Callable[[str], Any]) -> Mapping[str, Any]:
    source = f"kubeconfig {path}"
    text = _read(path, source, "").decode("utf-8", "replace")
    try:
        doc = loads(text)
    except ValueError:
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise KubeconfigError(source, "", f"not JSON or YAML: {e}") from None
    if not isinstance(doc, dict):
        raise KubeconfigError(
            source, "", "not a kubeconfig (a mapping of clusters, users, contexts)"
        )
    return doc


class _Entry:
    """A named cluster, user or context and the file it came from."""

    __slots__ = ("body", "name", "path", "section")

    def __init__(self, section: str, name: str, body: Mapping[str, Any], path: str) -> None:
        self.section = section
        self.name = name
        self.body = body
        self.path = path

    @property
    def source(self) -> str:
        return f"kubeconfig {self.path}"

    def key(self, field: str) -> str:
        return f"{self.section}[{self.name}].{self.section[:-1]}.{field}"

    def get(self, field: str, kind: type | tuple[type, ...] = str) -> Any:
        value = self.body.get(field)
        if value is None or value == "":
            return None
        if not isinstance(value, kind):
            raise KubeconfigError(
                self.source, self.key(field), f"must be a {_kind(kind)}, not {value!r}"
            )
        return value

    def file(self, field: str) -> str | None:
        name = self.get(field)
        if name is None:
            return None
        expanded = os.path.expanduser(name)
        return (
            expanded
            if os.path.isabs(expanded)
            else os.path.join(os.path.dirname(self.path), expanded)
        )

    def base64(self, field: str) -> bytes | None:
        value = self.get(field)
        if value is None:
            return None
        import base64  # imports ``re``: only when there is something to decode
        import binascii

        try:
            return base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            raise KubeconfigError(self.source, self.key(field), "not valid base64") from None


def _kind(kind: type | tuple[type, ...]) -> str:
    names = {str: "string", bool: "boolean (true or false)", dict: "mapping"}
    return names.get(kind, "value") if isinstance(kind, type) else "value"


def _merge(
    paths: list[str], loads: Callable[[str], Any]
) -> tuple[dict[str, dict[str, _Entry]], str | None, str]:
    """The named entries of every file (the first of a name wins) and the first
    ``current-context`` set, as kubectl merges a ``KUBECONFIG`` list."""
    sections: dict[str, dict[str, _Entry]] = {"clusters": {}, "users": {}, "contexts": {}}
    current: str | None = None
    current_from = paths[0]
    for path in paths:
        doc = _load_doc(path, loads)
        source = f"kubeconfig {path}"
        value = doc.get("current-context")
        if value and current is None:
            if not isinstance(value, str):
                raise KubeconfigError(source, "current-context", f"must be a string, not {value!r}")
            current, current_from = value, path
        for section, entries in sections.items():
            items = doc.get(section) or []
            if not isinstance(items, list):
                raise KubeconfigError(source, section, "must be a list")
            for index, item in enumerate(items):
                name = item.get("name") if isinstance(item, dict) else None
                body = item.get(section[:-1]) if isinstance(item, dict) else None
                if not isinstance(name, str) or not name:  # (no content shown: may be secret)
                    raise KubeconfigError(source, f"{section}[{index}]", "has no name")
                if body is not None and not isinstance(body, dict):
                    raise KubeconfigError(
                        source, f"{section}[{name}].{section[:-1]}", "must be a mapping"
                    )
                entries.setdefault(name, _Entry(section, name, body or {}, path))
    return sections, current, current_from


def load_kubeconfig(path: str, *, loads: Callable[[str], Any] | None = None) -> ClusterAccess:
    """The ``ClusterAccess`` of the current context of a kubeconfig. ``path`` may be a
    ``:``-separated list: the files that exist are merged (the first of a name wins).
    ``loads`` parses JSON (default ``json.loads``); YAML is parsed by PyYAML."""
    if loads is None:
        import json

        loads = json.loads
    paths = [os.path.abspath(p) for p in path.split(os.pathsep) if p]
    if len(paths) > 1:
        paths = [p for p in paths if os.path.exists(p)] or paths[:1]
    if not paths:
        raise KubeconfigError("kubeconfig", "", "no file named")
    sections, current, current_from = _merge(paths, loads)
    contexts = sections["contexts"]
    if current is None:
        if len(contexts) != 1:
            raise KubeconfigError(
                f"kubeconfig {current_from}",
                "current-context",
                f"not set, and there are {len(contexts)} contexts",
            )
        context = next(iter(contexts.values()))
    elif current in contexts:
        context = contexts[current]
    else:
        raise KubeconfigError(
            f"kubeconfig {current_from}", "current-context", f"no context named {current!r}"
        )

    cluster_name = context.get("cluster")
    cluster = sections["clusters"].get(cluster_name) if cluster_name else None
    if cluster is None:
        raise KubeconfigError(
            context.source, context.key("cluster"), f"no cluster named {cluster_name!r}"
        )
    user_name = context.get("user")
    user = _Entry("users", "", {}, context.path)
    if user_name:
        if user_name not in sections["users"]:
            raise KubeconfigError(
                context.source, context.key("user"), f"no user named {user_name!r}"
            )
        user = sections["users"][user_name]
    return _access(cluster, user)


def _access(cluster: _Entry, user: _Entry) -> ClusterAccess:
    for plugin in ("exec", "auth-provider"):
        if user.body.get(plugin):
            raise KubeconfigError(
                user.source,
                user.key(plugin),
                f"{plugin} credential plugins are not supported; give this user a token, "
                "tokenFile or client certificate (e.g. a service account token)",
            )
    if cluster.body.get("proxy-url"):
        raise KubeconfigError(cluster.source, cluster.key("proxy-url"), "proxies are not supported")
    server = cluster.get("server")
    if server is None:
        raise KubeconfigError(cluster.source, cluster.key("server"), "missing")
    split_server(server, source=cluster.source, key=cluster.key("server"))
    insecure = cluster.get("insecure-skip-tls-verify", bool)
    keys = {
        "ca_file": cluster.key("certificate-authority"),
        "ca_data": cluster.key("certificate-authority-data"),
        "client_cert_file": user.key("client-certificate"),
        "client_cert_data": user.key("client-certificate-data"),
        "client_key_file": user.key("client-key"),
        "client_key_data": user.key("client-key-data"),
        "token_file": user.key("tokenFile"),
    }
    access = ClusterAccess(
        source=cluster.source,
        server=server,
        ca_file=cluster.file("certificate-authority"),
        ca_data=cluster.base64("certificate-authority-data"),
        insecure=bool(insecure),
        tls_server_name=cluster.get("tls-server-name"),
        client_cert_file=user.file("client-certificate"),
        client_cert_data=user.base64("client-certificate-data"),
        client_key_file=user.file("client-key"),
        client_key_data=user.base64("client-key-data"),
        token=user.get("token"),
        token_file=None if user.get("token") else user.file("tokenFile"),
        username=user.get("username"),
        password=user.get("password"),
        keys=keys,
    )
    has_cert = access.client_cert_data or access.client_cert_file
    has_key = access.client_key_data or access.client_key_file
    if bool(has_cert) != bool(has_key):
        missing = "client-key" if has_cert else "client-certificate"
        raise KubeconfigError(user.source, user.key(missing), "missing (both or neither)")
    access.authorization()  # a tokenFile must be readable now
    return access


# -- in-cluster ---------------------------------------------------------------------------


def load_in_cluster(env: Mapping[str, str], *, sa_dir: str = SERVICE_ACCOUNT_DIR) -> ClusterAccess:
    """The ``ClusterAccess`` of a pod: ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the service
    account's ``token`` (re-read by ``authorization()``: bound tokens rotate) and ``ca.crt``."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeconfigError(
            "in-cluster config",
            "",
            "no kubeconfig and not in a cluster (KUBERNETES_SERVICE_HOST/PORT unset)",
        )
    source = f"service account {sa_dir}"
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    split_server(server, source=source, key="KUBERNETES_SERVICE_HOST/PORT")
    access = ClusterAccess(
        source=source,
        server=server,
        ca_file=os.path.join(sa_dir, "ca.crt"),
        token_file=os.path.join(sa_dir, "token"),
        keys={"ca_file": "ca.crt", "token_file": "token"},
    )
    access.authorization()
    return access


def load_access(kubeconfig: str | None, env: Mapping[str, str], **kw: Any) -> ClusterAccess:
    """From ``kubeconfig`` when given, else in-cluster."""
    return load_kubeconfig(kubeconfig, **kw) if kubeconfig else load_in_cluster(env)


# -- TLS ----------------------------------------------------------------------------------


def _private_file(data: bytes) -> str:
    """A 0600 temp file holding ``data`` (``ssl`` loads client keys only from paths)."""
    import time

    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    for attempt in range(100):
        path = os.path.join(base, f".kubelite-{os.getpid()}-{time.monotonic_ns()}-{attempt}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path
    raise OSError(f"cannot create a private temp file in {base}")


def ca_data_for_ssl(data: bytes) -> str | bytes:
    """``cadata`` for ``SSLContext.load_verify_locations``: PEM text, or DER bytes."""
    return data.decode("ascii", "replace") if b"-----BEGIN" in data else data


def ssl_context(access: ClusterAccess) -> ssl.SSLContext:
    """A client ``SSLContext`` that trusts the configured CA only (the system's CAs when
    none is configured), with the client certificate loaded. KubeconfigError naming the
    key when a certificate or key cannot be loaded."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    field = "ca_data" if access.ca_data is not None else "ca_file"
    try:
        if access.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif access.ca_data is not None:
            ctx.load_verify_locations(cadata=ca_data_for_ssl(access.ca_data))
        elif access.ca_file is not None:
            ctx.load_verify_locations(cafile=access.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise KubeconfigError(
            access.source, access.key(field), f"not a usable CA certificate: {e}"
        ) from None
    if access.client_cert_data is None and access.client_cert_file is None:
        return ctx
    temps: list[str] = []
    try:
        cert = access.client_cert_file
        if access.client_cert_data is not None:
            cert = _private_file(access.client_cert_data)
            temps.append(cert)
        key = access.client_key_file
        if access.client_key_data is not None:
            key = _private_file(access.client_key_data)
            temps.append(key)
        assert cert is not None
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as e:
        field = "client_cert_data" if access.client_cert_data is not None else "client_cert_file"
        raise KubeconfigError(
            access.source, access.key(field), f"client certificate and key not usable: {e}"
        ) from None
    finally:
        for t in temps:
            os.unlink(t)
    return ctx
