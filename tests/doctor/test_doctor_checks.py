"""The pure checks of ``xcluster-cni doctor`` (``xcluster_cni_lib.tools.doctor``): facts
in, OK/WARN/FAIL with a hint out. No kernel, no files, no API."""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Literal

import attrs
import pytest

from xcluster_cni_lib.core.overlay import Entries
from xcluster_cni_lib.core.values import Route
from xcluster_cni_lib.install.plan import CONFLIST_NAME, conflist, render_json
from xcluster_cni_lib.support.output import choose_format, render_table
from xcluster_cni_lib.tools import doctor
from xcluster_cni_lib.tools.doctor import FAIL, OK, WARN, DoctorFacts

X86_64 = 62
AARCH64 = 183


def route(dst: str, gw: str, node: str = "") -> Route:
    return Route(ipaddress.ip_network(dst), ipaddress.ip_address(gw), node=node)


def elf_header(machine: int, *, little: bool = True) -> bytes:
    order: Literal["little", "big"] = "little" if little else "big"
    return (
        b"\x7fELF"
        + bytes([2, 1 if little else 2, 1])
        + bytes(9)
        + (2).to_bytes(2, order)
        + machine.to_bytes(2, order)
        + bytes(44)
    )


WANTED = (route("10.244.2.0/24", "192.168.1.2", "n2"), route("fd00:10:244:2::/64", "fd00::2", "n2"))


def healthy(**changes: Any) -> DoctorFacts:
    facts = DoctorFacts(
        conf_dir="/etc/cni/net.d",
        conf_files={CONFLIST_NAME: render_json(conflist(mtu=1500))},
        bin_dir="/opt/cni/bin",
        plugins=tuple(
            doctor.PluginFile(n, present=True, executable=True, machine=X86_64)
            for n in doctor.PLUGINS
        ),
        host_machine=X86_64,
        ipam=doctor.IpamProbe("/run/xcluster-cni/ipam.sock", present=True, code=0),
        nodes=doctor.NodesRead("nodes file n.json", count=2, own="n1", own_found=True),
        protocol=202,
        desired=WANTED,
        present=WANTED,
        pod_cidrs=frozenset(
            ipaddress.ip_network(c)
            for c in ("10.244.1.0/24", "10.244.2.0/24", "fd00:10:244:1::/64", "fd00:10:244:2::/64")
        ),
        masquerade_table="xcluster-cni-202",
        policy=doctor.PolicyTables("xcluster-cni-policy-202", bridged=True),
        expected_mtu=1500,
        mtu_source="eth0 (192.168.1.1)",
    )
    return attrs.evolve(facts, **changes)


def by_name(facts: DoctorFacts) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.run_checks(facts)}


def test_a_healthy_node_is_all_ok_and_exits_0() -> None:
    checks = doctor.run_checks(healthy())
    assert [c.status for c in checks] == [OK] * len(doctor.CHECKS), checks
    assert [c.name for c in checks] == [
        "conflist",
        "plugins",
        "ipam",
        "api",
        "routes",
        "overlay",
        "masquerade",
        "policy",
        "mtu",
        "protocol",
    ]
    assert doctor.exit_code(checks) == 0


def test_exit_code_is_the_worst_status() -> None:
    def c(status: str) -> doctor.Check:
        return doctor.Check("x", status, "")

    assert doctor.exit_code([]) == 0
    assert doctor.exit_code([c(OK), c(WARN), c(OK)]) == 1
    assert doctor.exit_code([c(WARN), c(FAIL), c(OK)]) == 2


# -- conflist --------------------------------------------------------------------------------


def test_conflist_dir_missing() -> None:
    check = doctor.check_conflist(healthy(conf_files=None))
    assert check.status == FAIL
    assert "does not exist" in check.summary and "--cni-conf-dir" in check.hint


def test_conflist_removed() -> None:
    check = doctor.check_conflist(healthy(conf_files={"99-loopback.conf": b"{}"}))
    assert check.status == FAIL
    assert CONFLIST_NAME in check.summary
    assert "installer" in check.hint


def test_conflist_invalid_json() -> None:
    check = doctor.check_conflist(healthy(conf_files={CONFLIST_NAME: b"{not json"}))
    assert check.status == FAIL
    assert "not valid JSON" in check.summary


def test_conflist_without_plugins_list() -> None:
    check = doctor.check_conflist(healthy(conf_files={CONFLIST_NAME: b'{"name": "x"}'}))
    assert check.status == FAIL and "plugins" in check.summary


def test_conflist_not_first() -> None:
    files = {CONFLIST_NAME: render_json(conflist(mtu=1500)), "05-other.conflist": b"{}"}
    check = doctor.check_conflist(healthy(conf_files=files))
    assert check.status == FAIL
    assert check.summary.startswith("05-other.conflist comes before")
    assert "05-other.conflist" in check.hint


def test_a_users_variant_counts_and_files_runtimes_ignore_do_not() -> None:
    variant = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "mine",
            "plugins": [{"type": "bridge", "ipam": {"type": "kube-node"}}],
        }
    ).encode()
    files = {"20-mine.conflist": variant, "00-notes.txt": b"x"}
    check = doctor.check_conflist(healthy(conf_files=files))
    assert check.status == OK and "20-mine.conflist" in check.summary


# -- plugins -------------------------------------------------------------------------------


def with_plugin(**changes: Any) -> DoctorFacts:
    facts = healthy()
    plugins = tuple(attrs.evolve(p, **changes) if p.name == "bridge" else p for p in facts.plugins)
    return attrs.evolve(facts, plugins=plugins)


def test_plugin_missing() -> None:
    check = doctor.check_plugins(with_plugin(present=False))
    assert check.status == FAIL
    assert check.summary == "missing in /opt/cni/bin: bridge"
    assert "restart the xcluster-cni pod" in check.hint


def test_plugin_not_executable() -> None:
    check = doctor.check_plugins(with_plugin(executable=False))
    assert check.status == FAIL and "chmod 0755" in check.hint


def test_plugin_of_another_architecture() -> None:
    check = doctor.check_plugins(with_plugin(machine=AARCH64))
    assert check.status == FAIL
    assert "another architecture" in check.summary
    assert check.details == ("bridge: arm64",)


def test_plugin_that_is_a_script_is_a_warning() -> None:
    check = doctor.check_plugins(with_plugin(machine=None))
    assert check.status == WARN and "bridge" in check.summary


def test_plugin_unreadable() -> None:
    check = doctor.check_plugins(with_plugin(error="Permission denied"))
    assert check.status == FAIL and check.details == ("bridge: Permission denied",)


@pytest.mark.parametrize("little", [True, False])
def test_elf_machine(little: bool) -> None:
    assert doctor.elf_machine(elf_header(AARCH64, little=little)) == AARCH64
    assert doctor.elf_machine(b"#!/bin/sh\n" + bytes(30)) is None
    assert doctor.elf_machine(b"\x7fELF") is None


# -- IPAM ----------------------------------------------------------------------------------


def test_ipam_socket_missing() -> None:
    check = doctor.check_ipam(healthy(ipam=doctor.IpamProbe("/run/x.sock", present=False)))
    assert check.status == FAIL and "/run/x.sock" in check.summary
    assert "IPAM_SOCKET" in check.hint


def test_ipam_socket_not_answering() -> None:
    probe = doctor.IpamProbe("/run/x.sock", present=True, error="Connection refused")
    check = doctor.check_ipam(healthy(ipam=probe))
    assert check.status == FAIL and "Connection refused" in check.summary


def test_ipam_status_refused() -> None:
    out = json.dumps({"cniVersion": "1.1.0", "code": 50, "msg": "subnets unknown"}).encode()
    probe = doctor.IpamProbe("/run/x.sock", present=True, code=1, stdout=out)
    check = doctor.check_ipam(healthy(ipam=probe))
    assert check.status == FAIL
    assert check.summary == "STATUS failed: code 50: subnets unknown"


# -- API -----------------------------------------------------------------------------------


def test_api_unreachable() -> None:
    nodes = doctor.NodesRead("API server http://127.0.0.1:1", error="cannot list nodes: refused")
    checks = by_name(healthy(nodes=nodes, desired=None))
    assert checks["api"].status == FAIL
    assert "KUBECONFIG" in checks["api"].hint
    # what depends on the nodes says it was not compared
    assert checks["routes"].status == WARN and "fix the api check" in checks["routes"].hint


def test_own_node_not_found() -> None:
    nodes = doctor.NodesRead("f", count=2, own="n9", own_found=False)
    check = doctor.check_api(healthy(nodes=nodes))
    assert check.status == FAIL and "n9" in check.summary


def test_own_node_unknown() -> None:
    nodes = doctor.NodesRead("f", count=2, own=None, own_warning="no machine id match")
    check = doctor.check_api(healthy(nodes=nodes))
    assert check.status == WARN and check.details == ("no machine id match",)


# -- routes --------------------------------------------------------------------------------


def test_route_deleted() -> None:
    check = doctor.check_routes(healthy(present=WANTED[1:]))
    assert check.status == FAIL
    assert check.summary.startswith("1 missing, 0 wrong, 0 extra")
    assert check.details == ("missing: 10.244.2.0/24 via 192.168.1.2 (n2)",)
    assert "is it running here" in check.hint


def test_route_held_by_another_protocol() -> None:
    check = doctor.check_routes(healthy(present=WANTED[1:], holders={"10.244.2.0/24": (4,)}))
    assert check.status == FAIL
    assert check.details == ("missing: 10.244.2.0/24 via 192.168.1.2 (n2); held by protocol 4",)
    assert "another program" in check.hint


def test_route_wrong_gateway_and_extra() -> None:
    present = (
        route("10.244.2.0/24", "192.168.1.9"),
        WANTED[1],
        route("10.244.7.0/24", "192.168.1.7"),
    )
    check = doctor.check_routes(healthy(present=present))
    assert check.status == FAIL
    assert check.details == (
        "wrong: 10.244.2.0/24 via 192.168.1.9, want 10.244.2.0/24 via 192.168.1.2 (n2)",
        "extra: 10.244.7.0/24 via 192.168.1.7",
    )


def test_only_extra_routes_is_a_warning() -> None:
    check = doctor.check_routes(healthy(present=(*WANTED, route("10.244.7.0/24", "192.168.1.7"))))
    assert check.status == WARN


def test_overlay_routes_compare_without_the_device() -> None:
    wanted = tuple(attrs.evolve(r, device="xcvx202") for r in WANTED)
    assert doctor.check_routes(healthy(desired=wanted)).status == OK


def test_routes_not_read() -> None:
    check = doctor.check_routes(healthy(present=None, present_error="Operation not permitted"))
    assert check.status == WARN and "root" in check.hint


def test_many_differences_are_counted() -> None:
    wanted = tuple(route(f"10.{i}.0.0/24", "192.168.1.2") for i in range(30))
    check = doctor.check_routes(healthy(desired=wanted, present=()))
    assert len(check.details) == doctor.MAX_LISTED + 1
    assert check.details[-1] == "... and 10 more"


# -- overlay, masquerade ---------------------------------------------------------------------


VTEP = ipaddress.ip_address("10.244.2.0")
UNDERLAY = ipaddress.ip_address("192.168.1.2")
ENTRIES = Entries({VTEP: "02:aa:00:00:00:02"}, {"02:aa:00:00:00:02": UNDERLAY})


def overlay(**changes: Any) -> DoctorFacts:
    state = doctor.OverlayState("xcvx202", kind="vxlan", up=True, wanted=ENTRIES, present=ENTRIES)
    return healthy(overlay=attrs.evolve(state, **changes))


def test_overlay() -> None:
    assert doctor.check_overlay(overlay()).status == OK
    missing = doctor.check_overlay(overlay(kind=None))
    assert missing.status == FAIL and "no device xcvx202" in missing.summary
    assert doctor.check_overlay(overlay(kind="dummy")).status == FAIL
    assert doctor.check_overlay(overlay(up=False)).status == FAIL
    lost = doctor.check_overlay(overlay(present=Entries({}, {})))
    assert lost.status == FAIL and len(lost.details) == 2
    extra = doctor.check_overlay(overlay(wanted=Entries({}, {})))
    assert extra.status == WARN


def test_masquerade() -> None:
    assert doctor.check_masquerade(healthy()).status == OK
    on = healthy(masquerade=True, masquerade_present=True)
    assert doctor.check_masquerade(on).status == OK
    gone = doctor.check_masquerade(healthy(masquerade=True, masquerade_present=False))
    assert gone.status == FAIL and "inet xcluster-cni-202" in gone.summary
    left = doctor.check_masquerade(healthy(masquerade_present=True))
    assert left.status == WARN and "nft delete table inet xcluster-cni-202" in left.hint


# -- MTU, protocol ---------------------------------------------------------------------------


def test_mtu() -> None:
    assert doctor.check_mtu(healthy()).status == OK
    too_big = doctor.check_mtu(healthy(expected_mtu=1450))
    assert too_big.status == FAIL and "1500 > 1450" in too_big.summary
    assert doctor.check_mtu(healthy(expected_mtu=9000)).status == WARN
    assert doctor.check_mtu(healthy(expected_mtu=None, mtu_error="x")).status == WARN
    no_mtu = json.dumps(
        {"name": "x", "plugins": [{"type": "bridge", "ipam": {"type": "kube-node"}}]}
    )
    assert doctor.check_mtu(healthy(conf_files={CONFLIST_NAME: no_mtu.encode()})).status == WARN


def test_protocol() -> None:
    assert doctor.check_protocol(healthy()).status == OK
    owner = doctor.check_protocol(healthy(protocol_owner="zebra"))
    assert owner.status == WARN and "zebra" in owner.summary
    foreign = route("172.16.0.0/16", "192.168.1.254")
    used = doctor.check_protocol(healthy(present=(*WANTED, foreign)))
    assert used.status == FAIL
    assert used.details == ("172.16.0.0/16 via 192.168.1.254",)
    # a stale route to a node's pod CIDR is the routes check's business, not this one's
    stale = route("10.244.1.0/24", "192.168.1.1")
    assert doctor.check_protocol(healthy(present=(*WANTED, stale))).status == OK


# -- output --------------------------------------------------------------------------------


def test_report_json_and_table() -> None:
    checks = doctor.run_checks(healthy(present=WANTED[1:]))
    doc = doctor.report_json(checks)
    assert doc["status"] == FAIL and doc["exitCode"] == 2
    routes = next(c for c in doc["checks"] if c["check"] == "routes")
    assert routes["details"] == ["missing: 10.244.2.0/24 via 192.168.1.2 (n2)"]
    lines = render_table(doctor.TABLE_HEADER, doctor.table_rows(checks))
    assert lines[0].split() == ["CHECK", "STATUS", "SUMMARY"]
    at = next(i for i, line in enumerate(lines) if line.startswith("routes"))
    assert lines[at + 1].strip().startswith("hint: ")
    assert lines[at + 2].strip() == "missing: 10.244.2.0/24 via 192.168.1.2 (n2)"


def test_choose_format() -> None:
    assert choose_format(None, tty=True) == "table"
    assert choose_format(None, tty=False) == "json"
    assert choose_format(None, tty=False, default="table") == "table"
    assert choose_format("json", tty=True) == "json"
    with pytest.raises(ValueError):
        choose_format("yaml", tty=True)


def test_render_table() -> None:
    assert render_table(("a", "bb"), [("x", None), ("yyy", ["1", "2"])]) == [
        "A    BB",
        "x    -",
        "yyy  1,2",
    ]
    assert render_table(("a",), []) == ["A"]
