"""An API-server double for Nodes, Pods, Namespaces and NetworkPolicies, over real HTTP.

The official ``kubernetes`` client (or any HTTP client) talks to it unchanged: it serves
the core group (``nodes``, ``namespaces``, ``pods``) and ``networking.k8s.io/v1``
(``networkpolicies``) on ``127.0.0.1`` (an ephemeral port unless ``port=`` is given; a
``restart()`` comes back on the same port, with the same objects and history, like an API
server in front of the same etcd). Used by this project's tests, benchmarks and soak
campaign::

    from tests.apiserver import ApiServerDouble
    from tests.apiserver.objects import make_namespace, make_network_policy, make_pod
    from xcluster_cni_lib.testing.nodes import make_node

    with ApiServerDouble(bookmark_interval=1.0) as api:
        api.set_nodes(make_node(f"n{i}", index=i) for i in range(5000))
        api.add_namespace(make_namespace("shop", labels={"team": "a"}))
        api.add_pod(make_pod("web-0", "shop", node="n1", ips=["10.244.1.5"]))
        api.add_network_policy(make_network_policy("deny", "shop", pod_selector={}))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        ...
        api.heartbeat("n7")           # a MODIFIED event that changes nothing routing uses
        api.cut_watches()             # drop every open watch stream
        assert api.list_requests == 2

Resources
---------
=================== ======================================= ========== ============
resource            collection paths                        scope      field labels
=================== ======================================= ========== ============
``nodes``           ``/api/v1/nodes``                       cluster    ``spec.unschedulable``
``namespaces``      ``/api/v1/namespaces``                  cluster    ``status.phase``
``pods``            ``/api/v1/pods`` (all namespaces),      namespaced ``spec.nodeName``,
                    ``/api/v1/namespaces/{ns}/pods``                   ``spec.hostNetwork``,
                                                                       ``status.phase``, ...
``networkpolicies`` ``/apis/networking.k8s.io/v1/``         namespaced (none)
                    ``[namespaces/{ns}/]networkpolicies``
=================== ======================================= ========== ============

Every kind also has ``metadata.name`` and ``metadata.namespace`` as field labels; the full
lists are in ``_kinds.py`` (one ``Kind`` description per resource: the only kind-specific
code). One object is ``<collection>/{name}`` (namespaced: only under
``namespaces/{ns}/``); ``nodes``, ``namespaces`` and ``pods`` have a ``/status``
subresource (served like the object itself); other paths and subresources answer
404. A server's defaults are applied on every write: a Namespace gets the
``kubernetes.io/metadata.name`` label (NetworkPolicy ``namespaceSelector``s rely on it),
``spec.finalizers`` and ``status.phase: Active``; a Pod without ``status.phase`` gets
``Pending``.

Protocol served (the same for every resource)
---------------------------------------------
One resourceVersion sequence across all kinds, as etcd gives: each write of any kind takes
the next number; every LIST reports the store's current version; a BOOKMARK carries it.

``GET <collection>``
    LIST. ``limit`` pages over a snapshot; each page carries ``metadata.continue`` and,
    without selectors, ``remainingItemCount``; every page reports the snapshot's
    ``metadata.resourceVersion``. Items are in etcd's order (namespace, then name). A
    continue token whose snapshot was forgotten (``expire_history()`` of its resource,
    more than 16 paged lists in flight, or its last page already served) answers 410
    ``Expired``; a token of another resource answers 400. ``resourceVersion`` and
    ``resourceVersionMatch`` are accepted; the list is always the current state.
    ``labelSelector`` (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``,
    ``k notin (a,b)``) and ``fieldSelector`` (``f=v``, ``f==v``, ``f!=v`` over the field
    labels above; any other field answers 400 as a real server does) filter.
``GET <collection>?watch=true`` (also ``/api/v1/watch/...``, ``/apis/.../watch/...``)
    WATCH: a chunked stream of JSON lines ``{"type": ..., "object": ...}`` with
    ``ADDED``/``MODIFIED``/``DELETED``, and ``BOOKMARK`` (``kind``/``apiVersion`` of the
    resource) every ``bookmark_interval`` seconds when ``allowWatchBookmarks=true``.
    Without ``resourceVersion`` (or ``"0"``) the stream starts with an ``ADDED`` event per
    object. Each kind keeps its own history (``history_size`` events, as a watch cache
    per resource): from a ``resourceVersion`` older than that kind's retained history (or
    everything before ``expire_history()``) the stream is one ``ERROR`` event holding a
    410 ``Expired`` Status, as a real server sends. With a selector, an object that
    starts matching arrives as ``ADDED`` and one that stops matching as ``DELETED``
    (holding its last matching state at the event's resourceVersion), as a real
    server's watch cache sends: a pod bound to the node of ``fieldSelector=spec.nodeName=``
    arrives ``ADDED``. ``timeoutSeconds`` (default ``watch_timeout``) ends the stream
    cleanly.
``GET|PUT|PATCH|DELETE <collection>/{name}`` (and ``/status``), ``POST <collection>``
    404/409/422 answers are ``Status`` objects. PUT checks ``metadata.resourceVersion``
    when given (409 on mismatch). PATCH takes ``application/merge-patch+json``,
    ``application/strategic-merge-patch+json`` (maps, ``null`` deletes, ``$patch``,
    ``conditions``/``addresses`` merged by ``type``) and ``application/json-patch+json``.
    A POST into a namespace that does not exist answers 404; one whose object names
    another namespace, 400. Deleting a namespace deletes its pods and network policies
    first (each a DELETED event), then the namespace at once (no ``Terminating`` phase).
``/api``, ``/api/v1``, ``/apis``, ``/apis/networking.k8s.io``,
``/apis/networking.k8s.io/v1``, ``/version``, ``/healthz``
    Discovery documents (enough for ``kubernetes.dynamic.DynamicClient``), never counted
    as failures or checked for a token.

With ``token=`` every other request needs ``Authorization: Bearer <token>`` (401
otherwise); ``write_kubeconfig`` includes it.

Test-side API (thread-safe)
---------------------------
``ApiServerDouble(*, host="127.0.0.1", port=0, token=None, bookmark_interval=60.0,
watch_timeout=1800.0, history_size=2000)``; ``start()`` (returns self), ``stop()`` (closes
the listener, every connection and stream), ``restart(*, downtime=0.0)``, ``running``,
``url``, ``port``, ``write_kubeconfig(path) -> str``; context manager.

Objects of any kind (``resource`` is ``"nodes"``, ``"namespaces"``, ``"pods"`` or
``"networkpolicies"``; ``namespace=`` names a namespaced object):
``add(resource, obj)``, ``update(resource, obj)`` (replace; ``KeyError`` if absent),
``patch(resource, name, merge_patch, *, namespace=None)``, ``delete(resource, name, *,
namespace=None)``, ``touch(resource, name, *, namespace=None)`` (stored again unchanged:
a new resourceVersion and a MODIFIED event), ``get(resource, name, *, namespace=None) ->
dict | None``, ``names(resource, *, namespace=None)`` (``ns/name`` keys for namespaced
kinds, plain names within ``namespace``), ``objects(resource, *, namespace=None)``,
``set_objects(resource, iterable)`` (bulk: ADDED/MODIFIED/DELETED events as needed; 5,000
nodes of 13 KB take about a second). These writes skip admission: a pod may be added to a
namespace that does not exist. ``resource_version``. Objects are stored serialized; each
write gets the next resourceVersion (one per change, as etcd).

Shorthands: ``add_node(obj)``, ``update_node(obj)``, ``patch_node(name, merge_patch)``,
``delete_node(name)``, ``get_node(name)``, ``node_names()``, ``set_nodes(iterable)``,
``heartbeat(name)`` (every condition's ``lastHeartbeatTime`` bumped: a MODIFIED event);
``add_pod(obj)``, ``update_pod(obj)``, ``patch_pod(namespace, name, merge_patch)``,
``delete_pod(namespace, name)``, ``get_pod(namespace, name)``, ``set_pods(iterable)``;
the same for ``namespace`` (``patch_namespace(name, ...)``, ``delete_namespace(name)``,
``get_namespace(name)``, ``set_namespaces``) and ``network_policy``
(``add_network_policy``, ..., ``set_network_policies``). ``tests.apiserver.objects`` makes
valid objects: ``make_pod``, ``make_namespace``, ``make_network_policy``.

Faults (``resources=``, an iterable such as ``{"pods"}``, narrows each to those kinds;
without it they hit all): ``cut_watches()`` (drop open streams abruptly, no terminating
chunk), ``stall_watches(seconds=None, *, new_streams=False)`` / ``release_watches()``
(open but silent, not even bookmarks), ``expire_history()`` (the next watch from an older
RV and every outstanding continue token get 410), ``gone_watches(*, expire=True)`` (end
open streams with a 410 ERROR event now), ``send_bookmarks()``, ``fail_requests(n,
status=500, *, verbs=None, resources=None)`` (the next ``n`` matching requests get a
Status with that code), ``clear_failures()``, ``set_latency(seconds)`` (every later
request waits first). ``intercept``: ``None`` or a callable ``(verb, handler) -> bool``
that may answer a request itself (raw bytes: answers over any size, malformed events, no
answer at all; ``handler.resource`` names the resource); see ``tests.apiserver.hostile``,
which installs one.

Counters: ``requests`` (a Counter by verb: ``list``, ``watch``, ``get``, ``create``,
``update``, ``patch``, ``delete``, ``discovery``, ``unknown``, ``unsupported``),
``resource_requests`` (a Counter by ``(resource, verb)``, e.g. ``("pods", "watch")``),
``list_requests``, ``watch_requests`` (all kinds), ``active_watches``,
``active_watches_of(resource)``, ``reset_counters()``. Requests are counted when they
arrive, including those that then fail by injection.
"""

from ._server import ApiServerDouble, status_object

__all__ = ["ApiServerDouble", "status_object"]
