"""The echo bookkeeping of kernel.nftables: our own element updates are told apart from
someone else's changes (no nft needed)."""

from __future__ import annotations

import ipaddress

from xcluster_cni_lib.core import masquerade as m
from xcluster_cni_lib.kernel.nftables import Echoes, echo_keys

T = m.table_name(202)


def test_echo_keys_of_an_update_document() -> None:
    diff = m.SetsDiff(
        add={"cluster4": (ipaddress.ip_network("10.1.0.0/23"),)},
        delete={"cluster6": (ipaddress.ip_network("fd00::/64"),)},
    )
    keys = echo_keys(m.update_document(T, diff)["nftables"])
    assert keys == [("delete", T, "cluster6", "fd00::/64"), ("add", T, "cluster4", "10.1.0.0/23")]


def test_no_echo_keys_for_other_documents() -> None:
    assert echo_keys(m.table_document(T, m.MasqueradeSets())["nftables"]) is None
    assert echo_keys(m.delete_document(T)["nftables"]) is None
    assert echo_keys(m.fill_document(T, {"local4": ()})["nftables"]) is None


def test_echoes_are_consumed_once_and_lapse() -> None:
    now = [0.0]
    echoes = Echoes(ttl=5.0, clock=lambda: now[0])
    key = ("add", T, "cluster4", "10.1.0.0/24")
    other = ("delete", T, "cluster4", "10.1.0.0/24")
    echoes.expect([key])
    assert not echoes.consume([other])
    assert echoes.consume([key])
    assert not echoes.consume([key])  # once only
    echoes.expect([key, key])
    echoes.cancel([key])
    assert len(echoes) == 1
    now[0] = 6.0
    assert not echoes.consume([key])  # lapsed
    assert len(echoes) == 0
    assert not echoes.consume([])
