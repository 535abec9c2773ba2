#!/bin/sh
# Run on every node (as root) before xcluster-cni starts: a vxlan device carrying the
# overlay addresses that the Node annotation example.com/overlay-addresses publishes.
#   UNDERLAY_DEV   interface carrying node-to-node traffic         (eth1)
#   LOCAL          this node's IPv4 address on it                  (192.168.100.1)
#   PEERS          the other nodes' IPv4 addresses on it           ("192.168.100.2 192.168.100.3")
#   OVERLAY_ADDRS  this node's overlay addresses, with prefix      ("172.30.0.1/24 fd00:30::1/64")
#   MTU            underlay MTU minus 50 (vxlan over IPv4)         (1450)
# Same steps as docs/overlay.md, which tests/e2e/test_overlay.py runs.
set -eu
: "${UNDERLAY_DEV:?}" "${LOCAL:?}" "${PEERS:?}" "${OVERLAY_ADDRS:?}" "${MTU:=1450}"
ip link add vxlan0 type vxlan id 4242 dstport 4789 local "$LOCAL" dev "$UNDERLAY_DEV"
ip link set vxlan0 mtu "$MTU" up
for addr in $OVERLAY_ADDRS; do ip address add "$addr" dev vxlan0; done
for peer in $PEERS; do bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst "$peer"; done
