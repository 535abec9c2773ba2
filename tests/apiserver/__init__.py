"""An API-server double for Node objects, over real HTTP.

The official ``kubernetes`` client (or any HTTP client) talks to it unchanged: it serves
``/api/v1/nodes`` on ``127.0.0.1`` (an ephemeral port unless ``port=`` is given; a
``restart()`` comes back on the same port, with the same nodes and history, like an API
server in front of the same etcd). Used by this project's tests, benchmarks and soak
campaign::

    from tests.apiserver import ApiServerDouble
    from xcluster_cni_lib.testing.nodes import make_node

    with ApiServerDouble(bookmark_interval=1.0) as api:
        api.set_nodes(make_node(f"n{i}", index=i) for i in range(5000))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        ...
        api.heartbeat("n7")           # a MODIFIED event that changes nothing routing uses
        api.cut_watches()             # drop every open watch stream
        assert api.list_requests == 2

Protocol served
---------------
``GET /api/v1/nodes``
    LIST. ``limit`` pages over a snapshot; each page carries ``metadata.continue`` and
    ``remainingItemCount``; every page reports the snapshot's ``metadata.resourceVersion``.
    A continue token whose snapshot was forgotten (``expire_history()``, more than 16 paged
    lists in flight, or its last page already served) answers 410 ``Expired``.
    ``resourceVersion`` and ``resourceVersionMatch`` are accepted; the list is always the
    current state. ``labelSelector`` (``k=v``, ``k!=v``, ``k``, ``!k``) and
    ``fieldSelector`` (``metadata.name=``/``!=``) filter.
``GET /api/v1/nodes?watch=true`` (also ``/api/v1/watch/nodes``)
    WATCH: a chunked stream of JSON lines ``{"type": ..., "object": ...}`` with
    ``ADDED``/``MODIFIED``/``DELETED``, and ``BOOKMARK`` every ``bookmark_interval``
    seconds when ``allowWatchBookmarks=true``. Without ``resourceVersion`` (or ``"0"``) the
    stream starts with an ``ADDED`` event per node. From a ``resourceVersion`` older than the
    retained history (``history_size`` events, or everything before ``expire_history()``)
    the stream is one ``ERROR`` event holding a 410 ``Expired`` Status, as a real server
    sends. ``timeoutSeconds`` (default ``watch_timeout``) ends the stream cleanly.
``GET|PUT|PATCH|DELETE /api/v1/nodes/{name}`` (and ``/status``), ``POST /api/v1/nodes``
    404/409/422 answers are ``Status`` objects. PUT checks ``metadata.resourceVersion``
    when given (409 on mismatch). PATCH takes ``application/merge-patch+json``,
    ``application/strategic-merge-patch+json`` (maps, ``null`` deletes, ``$patch``,
    ``conditions``/``addresses`` merged by ``type``) and ``application/json-patch+json``.
``/api``, ``/api/v1``, ``/apis``, ``/version``, ``/healthz``
    Discovery documents, never counted as failures or checked for a token.

With ``token=`` every other request needs ``Authorization: Bearer <token>`` (401
otherwise); ``write_kubeconfig`` includes it.

Test-side API (thread-safe)
---------------------------
``ApiServerDouble(*, host="127.0.0.1", port=0, token=None, bookmark_interval=60.0,
watch_timeout=1800.0, history_size=2000)``; ``start()`` (returns self), ``stop()`` (closes
the listener, every connection and stream), ``restart(*, downtime=0.0)``, ``running``,
``url``, ``port``, ``write_kubeconfig(path) -> str``; context manager.

Nodes: ``add_node(obj)``, ``update_node(obj)`` (replace), ``patch_node(name, merge_patch)``,
``delete_node(name)``, ``get_node(name) -> dict | None``, ``node_names()``,
``set_nodes(iterable)`` (bulk: ADDED/MODIFIED/DELETED events as needed; 5,000 nodes of
13 KB take about a second), ``heartbeat(name)`` (every condition's ``lastHeartbeatTime``
bumped: a new resourceVersion and a MODIFIED event), ``resource_version``. Objects are
stored serialized; each write gets the next resourceVersion (one per change, as etcd).

Faults: ``cut_watches()`` (drop open streams abruptly, no terminating chunk),
``stall_watches(seconds=None, *, new_streams=False)`` / ``release_watches()`` (open but
silent, not even bookmarks), ``expire_history()`` (the next watch from an older RV and
every outstanding continue token get 410), ``gone_watches(*, expire=True)`` (end open
streams with a 410 ERROR event now), ``send_bookmarks()``, ``fail_requests(n, status=500,
*, verbs=None)`` (the next ``n`` requests of those verbs get a Status with that code),
``clear_failures()``, ``set_latency(seconds)`` (every later request waits first).
``intercept``: ``None`` or a callable ``(verb, handler) -> bool`` that may answer a request
itself (raw bytes: answers over any size, malformed events, no answer at all); see
``tests.apiserver.hostile``, which installs one.

Counters: ``requests`` (a Counter by verb: ``list``, ``watch``, ``get``, ``create``,
``update``, ``patch``, ``delete``, ``discovery``, ``unknown``), ``list_requests``,
``watch_requests``, ``active_watches``, ``reset_counters()``. Requests are counted when
they arrive, including those that then fail by injection.
"""

from ._server import ApiServerDouble, status_object

__all__ = ["ApiServerDouble", "status_object"]
