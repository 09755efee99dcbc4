#!/usr/bin/env bash
# Multi-host test of seqfeed in network namespaces.
#
# Every storage node and every rank runs in its own network namespace with
# its own address (10.99.1.0/24, assigned only inside the namespaces this
# script creates), connected by veth pairs to a bridge in a hub namespace.
# Nothing is configured in the caller's namespace.
#
#   phase A  two nodes (every file on both), RANKS ranks read and verify every
#            byte; node n0 is killed with SIGKILL mid-run: the ranks' reads
#            move to n1 and every rank finishes with all bytes checked.
#   phase B  n0 is gone; the ranks start again (n0 unreachable at start, n1
#            serves all); n1's link is cut mid-run (no RST, silence): every
#            rank fails within a bounded time with an error naming n1 and
#            the step.
#
# usage: scripts/netns-test.sh [path/to/seqfeed]   (default: target/debug/seqfeed)
# env:   RANKS (default 2)
# exit:  0 pass, 1 fail, 77 skipped (no permission to create namespaces)
set -uo pipefail

BIN=${1:-target/debug/seqfeed}
RANKS=${RANKS:-2}
P="sf$$"            # unique prefix for namespaces
HUB="$P-hub"
# shellcheck source=scripts/netns-lib.sh
source "$(dirname "$0")/netns-lib.sh"
WORK=$(mktemp -d /tmp/seqfeed-netns.XXXXXX)
PIDS=()

log() { echo "netns-test: $*"; }
fail() { log "FAIL: $*"; exit 1; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  wait 2>/dev/null
  netns_cleanup
  rm -rf "$WORK"
}
trap cleanup EXIT

if [[ ! -x "$BIN" ]]; then
  log "seqfeed binary not found at $BIN"; exit 1
fi
BIN=$(readlink -f "$BIN")
if ! netns_hub "$P"; then
  log "SKIP: 'ip netns add' is not permitted here (needs root/CAP_SYS_ADMIN)"
  exit 77
fi
add_host n0 10.99.1.10 || fail "host n0"
add_host n1 10.99.1.11 || fail "host n1"
for ((r = 0; r < RANKS; r++)); do add_host "r$r" "10.99.1.$((100 + r))" || fail "host r$r"; done
log "namespaces up: n0=10.99.1.10 n1=10.99.1.11 ranks=10.99.1.100..$((100 + RANKS - 1))"

# The dataset and plan (made by the loopback demo, which also checks it), and the cluster file.
DS="$WORK/ds"
"$BIN" --log warn demo --keep "$DS" --steps 40 --global-batch 64 --seq-len 2048 >"$WORK/demo.log" 2>&1 \
  || { cat "$WORK/demo.log"; fail "building the dataset"; }
"$BIN" --log warn place --dataset "$DS" --nodes n0=10.99.1.10:7000,n1=10.99.1.11:7000 \
  --replicas 2 --out "$WORK/cluster.toml" >/dev/null || fail "seqfeed place"

# serve NAME ADDR: start a node in its namespace; sets SERVE_PID.
serve() {
  rm -f "$WORK/$1.addr"
  ip netns exec "$P-$1" "$BIN" --log warn serve --dataset "$DS" --listen "$2:7000" \
    --cluster "$WORK/cluster.toml" --name "$1" --threads 2 --addr-file "$WORK/$1.addr" \
    >"$WORK/$1.log" 2>&1 &
  SERVE_PID=$!
  PIDS+=("$SERVE_PID")
  for _ in $(seq 100); do [[ -s "$WORK/$1.addr" ]] && return 0; sleep 0.1; done
  cat "$WORK/$1.log"; fail "node $1 did not start"
}

# ranks PHASE EXTRA...: start every rank in its namespace; sets RANK_PIDS.
ranks() {
  local phase=$1; shift
  RANK_PIDS=()
  for ((r = 0; r < RANKS; r++)); do
    ip netns exec "$P-r$r" "$BIN" --log warn read --plan "$DS/plan.toml" --dataset "$DS" \
      --cluster "$WORK/cluster.toml" --transport tcp --rank "$r" --world "$RANKS" --verify \
      --connections 2 "$@" >"$WORK/$phase-r$r.log" 2>&1 &
    RANK_PIDS+=($!)
    PIDS+=($!)
  done
}

# ---- phase A: SIGKILL a node mid-run, replicas take over.
serve n0 10.99.1.10; N0=$SERVE_PID
serve n1 10.99.1.11
T0=$(date +%s%N)
ranks A --consume-us 30000 --io-timeout-ms 3000 --failover-ms 5000
sleep 0.6
kill -9 "$N0"
log "phase A: SIGKILLed node n0 (pid $N0) $(ms_since "$T0") ms into the run"
moved=0
for ((r = 0; r < RANKS; r++)); do
  if ! wait "${RANK_PIDS[$r]}"; then cat "$WORK/A-r$r.log"; fail "phase A: rank $r failed"; fi
  grep -q "verified: .* OK" "$WORK/A-r$r.log" || { cat "$WORK/A-r$r.log"; fail "phase A: rank $r did not verify"; }
  m=$(sed -n 's/.*rows failed over: \([0-9]*\).*/\1/p' "$WORK/A-r$r.log")
  moved=$((moved + ${m:-0}))
done
TA=$(ms_since "$T0")
[[ $moved -gt 0 ]] || fail "phase A: no row moved to the replica (was n0 killed too late?)"
log "phase A: $RANKS ranks verified every byte in $TA ms; $moved rows moved from n0 to n1"

# ---- phase B: n0 stays dead; cut n1's link mid-run: bounded failure naming n1 and the step.
T0=$(date +%s%N)
ranks B --consume-us 30000 --io-timeout-ms 1500 --failover-ms 2000
sleep 0.8
ip netns exec "$HUB" ip link set h-n1 down
log "phase B: cut n1's link $(ms_since "$T0") ms into the run"
for ((r = 0; r < RANKS; r++)); do
  if wait "${RANK_PIDS[$r]}"; then cat "$WORK/B-r$r.log"; fail "phase B: rank $r succeeded without any node"; fi
  grep -q "n1" "$WORK/B-r$r.log" && grep -q "step [0-9]" "$WORK/B-r$r.log" \
    || { cat "$WORK/B-r$r.log"; fail "phase B: rank $r's error does not name n1 and the step"; }
done
TB=$(ms_since "$T0")
ERR=$(grep -h "seqfeed: error" "$WORK/B-r0.log" | head -1)
log "phase B: every rank failed in bounded time ($TB ms): $ERR"
log "PASS: $RANKS ranks + 2 nodes in separate namespaces; SIGKILL fail-over verified ($moved rows moved), partition fails cleanly naming node and step"
