"""The struct-based rtnetlink codec, without a kernel: what it encodes decodes back."""

from __future__ import annotations

import ipaddress
import struct

from xcluster_cni_lib.core.values import Route
from xcluster_cni_lib.kernel import codec as rc


def route(dst: str, gateway: str) -> Route:
    return Route(ipaddress.ip_network(dst), ipaddress.ip_address(gateway))


ROUTES = [route("10.1.0.0/24", "192.168.1.2"), route("fd01:2::/64", "fd00::2"),
          route("0.0.0.0/0", "192.168.1.1")]  # fmt: skip


def test_encoded_routes_decode_back_with_ack_on_the_last_only() -> None:
    out = bytearray(4096)
    count, length = rc.encode_routes(
        out, ROUTES, 0, 10, msg_type=rc.RTM_NEWROUTE,
        flags=rc.NLM_F_REQUEST | rc.NLM_F_CREATE | rc.NLM_F_EXCL, last_flags=rc.NLM_F_ACK,
        seq=500, table=1000, protocol=202, gateway=True,
    )  # fmt: skip
    assert count == 3
    headers = list(rc.iter_messages(out, length))
    assert [h.seq for h in headers] == [500, 501, 502]
    assert [bool(h.flags & rc.NLM_F_ACK) for h in headers] == [False, False, True]
    assert all(h.flags & rc.NLM_F_EXCL for h in headers)
    decoded = [rc.parse_route(out, h) for h in headers]
    for msg, r in zip(decoded, ROUTES, strict=True):
        assert msg.table == 1000  # from RTA_TABLE; rtm_table says "compat"
        assert msg.protocol == 202
        assert msg.dst_len == r.dst.prefixlen
        assert msg.dst == r.dst.network_address.packed
        assert msg.gateway == r.gateway.packed
    assert rc.route_header(out, headers[0]) == (rc.AF_INET, rc.RT_TABLE_COMPAT, 202)


def test_encoding_stops_when_the_buffer_is_full_and_resumes() -> None:
    size4 = rc.route_message_size(rc.AF_INET, gateway=False)
    out = bytearray(size4 + 10)
    count, length = rc.encode_routes(
        out, ROUTES, 0, 10, msg_type=rc.RTM_DELROUTE, flags=rc.NLM_F_REQUEST, seq=1,
        table=254, protocol=202, gateway=False,
    )  # fmt: skip
    assert (count, length) == (1, size4)
    msg = rc.parse_route(out, next(rc.iter_messages(out, length)))
    assert msg.gateway is None and msg.dst == bytes([10, 1, 0, 0])
    count, _ = rc.encode_routes(
        out, ROUTES, 1, 2, msg_type=rc.RTM_DELROUTE, flags=rc.NLM_F_REQUEST, seq=2,
        table=254, protocol=202, gateway=False,
    )  # fmt: skip
    assert count == 0  # an IPv6 message does not fit
    assert rc.encode_routes(
        bytearray(4096), ROUTES, 1, 2, msg_type=rc.RTM_DELROUTE, flags=rc.NLM_F_REQUEST,
        seq=2, table=254, protocol=202, gateway=False,
    )[0] == 1  # fmt: skip


def test_error_answer_with_extended_ack_text() -> None:
    text = b"Nexthop has invalid gateway\0"
    attr = struct.pack("=HH", 4 + len(text), rc.NLMSGERR_ATTR_MSG) + text
    attr += b"\0" * (-len(attr) % 4)
    request_header = struct.pack("=IHHII", 60, rc.RTM_NEWROUTE, 0x605, 77, 0)
    body = struct.pack("=i", -22) + request_header + attr
    flags = rc.NLM_F_CAPPED | rc.NLM_F_ACK_TLVS
    message = struct.pack("=IHHII", 16 + len(body), rc.NLMSG_ERROR, flags, 77, 1234) + body
    (header,) = rc.iter_messages(message, len(message))
    assert rc.parse_ack(message, header) == rc.Ack(77, 22, "Nexthop has invalid gateway")


def test_plain_ack() -> None:
    body = struct.pack("=i", 0) + struct.pack("=IHHII", 40, rc.RTM_DELROUTE, 5, 9, 0)
    message = struct.pack("=IHHII", 16 + len(body), rc.NLMSG_ERROR, rc.NLM_F_CAPPED, 9, 1) + body
    (header,) = rc.iter_messages(message, len(message))
    assert rc.parse_ack(message, header) == rc.Ack(9, 0, "")


def test_truncated_buffers_are_not_walked_past() -> None:
    out = bytearray(4096)
    _, length = rc.encode_routes(
        out, ROUTES, 0, 3, msg_type=rc.RTM_NEWROUTE, flags=1, seq=1, table=254,
        protocol=202, gateway=True,
    )  # fmt: skip
    assert len(list(rc.iter_messages(out, length - 1))) == 2


def test_lookups_ask_for_the_matching_route_of_each_destination() -> None:
    out = bytearray(4096)
    count, length = rc.encode_lookups(
        out, [r.dst for r in ROUTES[:2]], flags=rc.NLM_F_REQUEST, last_flags=rc.NLM_F_ACK, seq=40
    )
    assert count == 2
    headers = list(rc.iter_messages(out, length))
    assert [(h.msg_type, h.seq) for h in headers] == [(rc.RTM_GETROUTE, 40), (rc.RTM_GETROUTE, 41)]
    assert [bool(h.flags & rc.NLM_F_ACK) for h in headers] == [False, True]
    v4, v6 = (rc.parse_route(out, h) for h in headers)
    # the whole address (a lookup), the destination's network address, header fields zero
    # as strict checking wants them; IPv4 also asks which table answered
    assert (v4.family, v4.dst_len, v4.dst, v4.table, v4.protocol) == (
        rc.AF_INET,
        32,
        bytes([10, 1, 0, 0]),
        0,
        0,
    )
    assert v4.flags == rc.RTM_F_FIB_MATCH | rc.RTM_F_LOOKUP_TABLE
    assert (v6.family, v6.dst_len, v6.flags) == (rc.AF_INET6, 128, rc.RTM_F_FIB_MATCH)
    assert v6.dst == ROUTES[1].dst.network_address.packed
    assert v4.nl_flags == rc.NLM_F_REQUEST  # the header's flags come along
    small = bytearray(len(out[: headers[0].end]))
    assert rc.encode_lookups(small, [r.dst for r in ROUTES], flags=rc.NLM_F_REQUEST, seq=1)[0] == 1
