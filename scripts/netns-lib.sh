# Network-namespace "hosts" for the multi-host tests (sourced by
# scripts/netns-test.sh and scripts/cluster/run.sh).
#
# netns_hub PREFIX   creates the hub namespace PREFIX-hub with a bridge; returns
#                    1 when 'ip netns add' is not permitted.
# add_host NAME ADDR a namespace PREFIX-NAME whose eth0 has ADDR/24, bridged to the hub.
# netns_cleanup      deletes every namespace made here.
# Every address lives only inside the namespaces made here; nothing is
# configured in the caller's namespace.

NETNS_PREFIX=""
NETNS_LIST=()

netns_hub() {
  NETNS_PREFIX=$1
  ip netns add "$NETNS_PREFIX-hub" 2>/dev/null || return 1
  NETNS_LIST+=("$NETNS_PREFIX-hub")
  ip netns exec "$NETNS_PREFIX-hub" ip link set lo up
  ip netns exec "$NETNS_PREFIX-hub" ip link add br0 type bridge
  ip netns exec "$NETNS_PREFIX-hub" ip link set br0 up
}

add_host() {
  local ns="$NETNS_PREFIX-$1" hub="$NETNS_PREFIX-hub"
  ip netns add "$ns" || return 1
  NETNS_LIST+=("$ns")
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" ip link add eth0 type veth peer name "h-$1" netns "$hub" || return 1
  ip netns exec "$hub" ip link set "h-$1" master br0
  ip netns exec "$hub" ip link set "h-$1" up
  ip netns exec "$ns" ip addr add "$2/24" dev eth0
  ip netns exec "$ns" ip link set eth0 up
}

netns_cleanup() {
  local ns
  for ns in "${NETNS_LIST[@]}"; do ip netns del "$ns" 2>/dev/null; done
  NETNS_LIST=()
}
