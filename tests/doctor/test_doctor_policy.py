"""The ``policy`` check of ``xcluster-cni doctor``, pure: NetworkPolicy tables as nft lists
them (a listing recorded from nft 1.0.6, ``tests/data/nft-policy-listing.json``) in,
OK/WARN/FAIL with a hint out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from xcluster_cni_lib.tools import doctor
from xcluster_cni_lib.tools.doctor import FAIL, OK, WARN, DoctorFacts, PolicyTables

LISTING = Path(__file__).resolve().parents[1] / "data" / "nft-policy-listing.json"
TABLE = "xcluster-cni-policy-202"


def listing(family: str) -> tuple[dict[str, Any], ...]:
    """One table of the recorded listing (metainfo dropped)."""
    objects = json.loads(LISTING.read_text())["nftables"]
    return tuple(
        o for o in objects if "metainfo" not in o and next(iter(o.values()))["family"] == family
    )


def facts(*, on: bool, **tables: Any) -> DoctorFacts:
    return DoctorFacts(
        conf_dir="/etc/cni/net.d",
        conf_files={},
        bin_dir="/opt/cni/bin",
        network_policy=on,
        policy=PolicyTables(TABLE, **tables),
    )


def both(**changes: Any) -> dict[str, Any]:
    """Both recorded tables on a node with the pods' bridge."""
    return {"inet": listing("inet"), "bridge": listing("bridge"), "bridged": True, **changes}


def test_not_read_is_not_checked() -> None:
    check = doctor.check_policy(attrs.evolve(facts(on=True), policy=None))
    assert (check.status, check.summary) == (WARN, "not checked")


# -- NETWORK_POLICY off ----------------------------------------------------------------------


def test_off_without_tables_is_ok() -> None:
    check = doctor.check_policy(facts(on=False, bridged=True))
    assert (check.status, check.summary) == (OK, "NETWORK_POLICY is off: no tables")


def test_off_without_nft_is_ok() -> None:
    """A node without nft (or a read that failed) is fine when nothing is enforced."""
    check = doctor.check_policy(facts(on=False, error="nft not found"))
    assert check.status == OK
    assert check.summary == "NETWORK_POLICY is off (tables not read: nft not found)"


def test_off_with_leftover_tables_warns() -> None:
    check = doctor.check_policy(facts(on=False, **both()))
    assert check.status == WARN
    assert check.summary == (
        f"NETWORK_POLICY is off but table inet {TABLE} and bridge {TABLE} is present: "
        "it still polices this node's pods"
    )
    assert "the agent deletes them when it starts" in check.hint
    assert f"nft delete table inet {TABLE}; nft delete table bridge {TABLE}" in check.hint


def test_off_with_only_a_leftover_bridge_table_warns() -> None:
    check = doctor.check_policy(facts(on=False, bridge=listing("bridge")))
    assert check.status == WARN
    assert f"table bridge {TABLE} is present" in check.summary
    assert "inet" not in check.hint


# -- NETWORK_POLICY on -----------------------------------------------------------------------


def test_on_with_both_tables_is_ok_and_counts() -> None:
    """The recorded tables: ingress4/6 hold 1+1 addresses, egress4/6 2+2 (see the listing)."""
    check = doctor.check_policy(facts(on=True, **both()))
    assert check.status == OK, check
    counts = doctor.element_counts(listing("inet"))
    assert (counts["ingress4"], counts["ingress6"], counts["egress4"], counts["egress6"]) == (
        1,
        1,
        2,
        2,
    )
    total = sum(counts.values())
    assert total > 6  # self sets, vmaps and class chains' sets count too
    assert check.summary == (
        f"table inet {TABLE}: 2 local pod addresses isolated for ingress, 4 for egress, "
        f"{total} elements; table bridge {TABLE} for cbr0"
    )
    assert check.details == ()


def test_on_without_a_bridge_needs_no_bridge_table() -> None:
    check = doctor.check_policy(facts(on=True, **both(bridge=None, bridged=False)))
    assert check.status == OK
    assert check.summary.endswith("; no cbr0 here: no bridge table needed")
    unknown = doctor.check_policy(facts(on=True, **both(bridge=None, bridged=None)))
    assert unknown.status == OK
    assert unknown.summary.endswith(f"; no table bridge {TABLE} (cbr0 not looked up)")
    unbridged = doctor.check_policy(facts(on=True, **both(bridge=None, bridge_link=None)))
    assert unbridged.status == OK
    assert unbridged.summary.endswith("; POLICY_BRIDGE is empty: no bridge table needed")


def test_the_bridge_table_redirects_to_the_bridge_address() -> None:
    """The recorded bridge table sends policed frames to 02:00:00:00:00:01."""
    assert doctor.redirect_macs(listing("bridge")) == {"02:00:00:00:00:01"}
    same = doctor.check_policy(facts(on=True, **both(bridge_mac="02:00:00:00:00:01")))
    assert same.status == OK
    upper = doctor.check_policy(facts(on=True, **both(bridge_mac="02:00:00:00:00:01".upper())))
    assert upper.status == OK
    moved = doctor.check_policy(facts(on=True, **both(bridge_mac="02:00:00:00:00:09")))
    assert moved.status == FAIL
    assert moved.summary == (
        f"table bridge {TABLE} sends policed pods' frames to 02:00:00:00:00:01 but cbr0 has "
        "02:00:00:00:00:09: same-node traffic of policed pods is lost"
    )
    assert "pins the bridge's address" in moved.hint


def test_on_with_the_bridge_table_missing_warns() -> None:
    check = doctor.check_policy(facts(on=True, **both(bridge=None, bridge_link="br-pods")))
    assert check.status == WARN
    assert check.summary == (
        f"pods are bridged on br-pods but table bridge {TABLE} is missing: traffic between "
        "pods of this node is not policed"
    )
    assert "POLICY_BRIDGE=br-pods" in check.hint
    assert check.details[0].startswith(f"table inet {TABLE}: 2 local pod addresses")


def test_through_br_netfilter_no_bridge_table_is_needed() -> None:
    check = doctor.check_policy(
        facts(on=True, **both(bridge=None, bridge_link="cbr0", br_netfilter=True))
    )
    assert check.status == OK
    assert check.summary.endswith("; same-node traffic judged through br_netfilter")


def test_on_with_the_inet_table_missing_fails() -> None:
    for tables in (both(inet=None), both(inet=None, bridge=None), {}):
        check = doctor.check_policy(facts(on=True, **tables))
        assert check.status == FAIL
        assert check.summary == (
            f"NETWORK_POLICY=true but table inet {TABLE} is missing: no policy is enforced"
        )
        assert "pods, namespaces and networkpolicies" in check.hint
        assert "RBAC" in check.hint


def test_on_without_the_forward_chain_fails() -> None:
    inet = listing("inet")
    unhooked = tuple(
        {"chain": {k: v for k, v in o["chain"].items() if k not in ("type", "hook", "prio")}}
        if "chain" in o and o["chain"]["name"] == "forward"
        else o
        for o in inet
    )
    gone = tuple(
        o
        for o in inet
        if not ("chain" in o and o["chain"]["name"] == "forward")
        and not ("rule" in o and o["rule"]["chain"] == "forward")
    )
    for tampered in (unhooked, gone):
        assert doctor.forward_hooked(inet) and not doctor.forward_hooked(tampered)
        check = doctor.check_policy(facts(on=True, **both(inet=tampered)))
        assert check.status == FAIL
        assert check.summary == (
            f"table inet {TABLE} has no chain forward hooked at forward: no policy is enforced"
        )
        assert "rewrites it within a second" in check.hint


def test_on_and_unreadable_fails() -> None:
    check = doctor.check_policy(facts(on=True, error="list table inet x failed: nft said: oops"))
    assert check.status == FAIL
    assert check.summary.startswith("NETWORK_POLICY=true; tables not read: list table")
    assert "root" in check.hint


def test_an_empty_table_counts_zero() -> None:
    """A table that isolates nobody (no policy selects a local pod) is OK with zeros."""
    inet = tuple(
        {kind: {k: v for k, v in spec.items() if k != "elem"}}
        for o in listing("inet")
        for kind, spec in o.items()
    )
    check = doctor.check_policy(facts(on=True, **both(inet=inet)))
    assert check.status == OK
    assert "0 local pod addresses isolated for ingress, 0 for egress, 0 elements" in check.summary
