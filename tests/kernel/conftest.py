"""Fixtures of the kernel tests: a namespace with reachable gateways and a table in it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kernel.helpers import PROTO, add_gateways
from xcluster_cni_lib.kernel.routetable import NetlinkRouteTable


@pytest.fixture
def gw_netns(netns: str) -> Iterator[str]:
    """The ``netns`` namespace with the gateways of ``helpers.add_gateways``."""
    add_gateways(netns)
    yield netns


@pytest.fixture
def table(gw_netns: str) -> Iterator[NetlinkRouteTable]:
    with NetlinkRouteTable(PROTO, netns=gw_netns) as t:
        yield t
