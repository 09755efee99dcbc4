#!/usr/bin/env bash
# Trainer hosts that hold no data, tested as a cluster.
#
# Two storage hosts (s0, s1), each serving its own directory that holds every
# source's manifest and only the files `seqfeed place --stage` gave it (one
# replica: each file on one host), and two trainer hosts (t0, t1) whose
# working directory holds plan.toml and cluster.toml only. Every "host" is a
# network namespace with its own address (10.99.2.0/24, only inside the
# namespaces made here; scripts/netns-lib.sh).
#
#   read      `seqfeed read` on both trainers (data-parallel ranks 0 and 1 of 2)
#             over tcp: each digest equals the same rank's read of the full
#             dataset on the build host, and so do the dataset fingerprints
#   python    `seqfeed.Loader` on both trainers (scripts/cluster/rows.py): every
#             row equals the bytes at the plan's offset in the storage host's file
#   torchrun  crates/python/examples/train_gpt.py across the two trainer hosts
#             (2 x 2 ranks, tensor-parallel pairs that compare their batches):
#             every rank finishes and the loss falls
#
# No trainer process can see a .seq file: each runs in a mount namespace in
# which the storage and build directories are empty tmpfs mounts, and its
# (and its children's) /proc maps and open files are sampled every 0.1 s
# while it runs; a .seq path there fails the test.
#
# Where network namespaces are not permitted, the same runs on 127.0.0.1 with
# separate directories (torchrun then runs its 4 ranks on one host,
# --standalone), and the script says so.
#
# usage: scripts/cluster/run.sh SEQFEED_BIN [PYTHON]
#   PYTHON: an interpreter with torch and seqfeed installed; without it only
#           the `read` check runs (and the script says so)
# env:   CHECKS (default "read python torchrun")
# exit:  0 pass, 1 fail
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=$(readlink -f "${1:?usage: run.sh SEQFEED_BIN [PYTHON]}")
PY=${2:-}
CHECKS=${CHECKS:-read python torchrun}
WORK=$(mktemp -d /tmp/seqfeed-cluster.XXXXXX)
BUILD="$WORK/build"    # the data-preparation host: the full dataset
STORE="$WORK/storage"  # STORE/s0, STORE/s1: the storage hosts' directories
PIDS=()
# shellcheck source=scripts/netns-lib.sh
source "$REPO/scripts/netns-lib.sh"

log() { echo "cluster-test: $*"; }
fail() { log "FAIL: $*"; exit 1; }
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  wait 2>/dev/null
  netns_cleanup
  rm -rf "$WORK"
}
trap cleanup EXIT
[[ -x "$BIN" ]] || fail "no seqfeed binary at $BIN"
mkdir -p "$BUILD" "$STORE" "$WORK/t0" "$WORK/t1"

# ---- the hosts
if netns_hub "sfc$$"; then
  MODE=netns
  add_host s0 10.99.2.10 && add_host s1 10.99.2.11 && add_host t0 10.99.2.100 \
    && add_host t1 10.99.2.101 || fail "creating the namespaces"
  declare -A ADDR=([s0]=10.99.2.10 [s1]=10.99.2.11 [t0]=10.99.2.100 [t1]=10.99.2.101)
  PORT=7000
  on() { local h=$1; shift; ip netns exec "$NETNS_PREFIX-$h" "$@"; }
  log "hosts: network namespaces s0=10.99.2.10 s1=10.99.2.11 (storage) t0=10.99.2.100 t1=10.99.2.101 (trainers)"
else
  MODE=loopback
  declare -A ADDR=([s0]=127.0.0.1 [s1]=127.0.0.1 [t0]=127.0.0.1 [t1]=127.0.0.1)
  PORT=0
  on() { shift; "$@"; }
  log "hosts: 'ip netns add' is not permitted here: running on 127.0.0.1 with separate directories instead"
fi

# A private mount namespace hides the storage and build directories from
# trainer processes (where unshare is permitted).
if unshare -m --propagation private sh -c "mount -t tmpfs none '$WORK/t0' && umount '$WORK/t0'" 2>/dev/null; then
  HIDE=1
  log "trainer processes run in mount namespaces where $STORE and $BUILD are empty"
else
  HIDE=0
  log "unshare -m is not permitted: trainers see the storage directories; the /proc sampling still checks them"
fi

# ---- the data (prepared on the build host), placed and staged per storage host
python3 "$REPO/crates/python/examples/prepare_corpus.py" --out "$BUILD" --seqfeed "$BIN" \
  --seq-len 32 --global-batch 8 --steps 24 >"$WORK/prepare.log" 2>&1 \
  || { cat "$WORK/prepare.log"; fail "preparing the corpus"; }
if [[ $MODE == netns ]]; then
  NODES="s0=${ADDR[s0]}:$PORT,s1=${ADDR[s1]}:$PORT"
else
  NODES="s0=127.0.0.1:1,s1=127.0.0.1:2"  # placeholders: the nodes pick their ports
fi
"$BIN" --log warn place --dataset "$BUILD/data" --nodes "$NODES" --replicas 1 \
  --out "$BUILD/cluster.toml" --stage "$STORE" >"$WORK/place.log" 2>&1 \
  || { cat "$WORK/place.log"; fail "seqfeed place --stage"; }
for h in s0 s1; do
  n=$(find "$STORE/$h" -name '*.seq' | wc -l)
  [[ $n -gt 0 ]] || fail "storage host $h holds no sequence file"
  log "storage host $h holds $n sequence files and every manifest"
done

# ---- the storage nodes
CLUSTER_TEXT=$(cat "$BUILD/cluster.toml")
for i in 0 1; do
  h=s$i
  on "$h" "$BIN" --log warn serve --dataset "$STORE/$h" --cluster "$BUILD/cluster.toml" --name "$h" \
    --listen "${ADDR[$h]}:$PORT" --threads 2 --addr-file "$WORK/$h.addr" >"$WORK/$h.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do [[ -s "$WORK/$h.addr" ]] && break; sleep 0.1; done
  [[ -s "$WORK/$h.addr" ]] || { cat "$WORK/$h.log"; fail "node $h did not start"; }
  real=$(tr -d '[:space:]' <"$WORK/$h.addr")
  [[ $MODE == loopback ]] && CLUSTER_TEXT=${CLUSTER_TEXT//\"127.0.0.1:$((i + 1))\"/\"$real\"}
done
for t in t0 t1; do
  cp "$BUILD/plan.toml" "$WORK/$t/plan.toml"
  printf '%s\n' "$CLUSTER_TEXT" >"$WORK/$t/cluster.toml"
  [[ "$(ls "$WORK/$t")" == $'cluster.toml\nplan.toml' ]] || fail "trainer $t's directory holds more than plan.toml and cluster.toml"
done
log "trainer hosts t0, t1: working directories hold plan.toml and cluster.toml only"

# descendants PID: every process below PID.
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }

# watch_seq PID OUT: samples PID and its descendants' maps and open files for
# .seq paths every 0.1 s while PID lives; writes what it found to OUT and
# the number of samples to OUT.n.
watch_seq() {
  local pid=$1 out=$2 n=0 p
  : >"$out"
  while kill -0 "$pid" 2>/dev/null; do
    for p in "$pid" $(descendants "$pid"); do
      grep -h '\.seq' "/proc/$p/maps" 2>/dev/null >>"$out"
      find "/proc/$p/fd" -lname '*.seq' -printf '%p -> %l\n' 2>/dev/null >>"$out"
    done
    n=$((n + 1))
    sleep 0.1
  done
  echo "$n" >"$out.n"
}

# trainer HOST NAME CMD...: runs CMD on trainer HOST in its working
# directory (storage and build directories hidden), watched; fails the test
# when CMD fails or a .seq file showed up.
trainer() {
  local host=$1 name=$2; shift 2
  local dir="$WORK/$host" out="$WORK/$host.$name"
  if [[ $HIDE == 1 ]]; then
    on "$host" unshare -m --propagation private sh -c \
      'mount -t tmpfs none "$1" && mount -t tmpfs none "$2" && cd "$3" && shift 3 && exec "$@"' \
      sh "$STORE" "$BUILD" "$dir" "$@" >"$out.log" 2>&1 &
  else
    (cd "$dir" && on "$host" "$@") >"$out.log" 2>&1 &
  fi
  local pid=$!
  PIDS+=("$pid")
  watch_seq "$pid" "$out.seq" &
  local watcher=$!
  TRAINER_RC=0
  wait "$pid" || TRAINER_RC=$?
  wait "$watcher"
  if [[ -s "$out.seq" ]]; then cat "$out.seq"; fail "$name on $host: a trainer process mapped or opened a .seq file"; fi
  TRAINER_SAMPLES=$(cat "$out.seq.n")
  return "$TRAINER_RC"
}

PASSED=()
# ---- read: seqfeed read on each trainer vs the full dataset on the build host
if [[ " $CHECKS " == *" read "* ]]; then
  for r in 0 1; do
    trainer "t$r" read "$BIN" --log warn read --plan plan.toml --cluster cluster.toml --transport tcp \
      --rank "$r" --world 2 --digest --json --consume-us 20000
    [[ $TRAINER_RC == 0 ]] || { cat "$WORK/t$r.read.log"; fail "seqfeed read on t$r"; }
    "$BIN" --log warn read --plan "$BUILD/plan.toml" --dataset "$BUILD/data" --local --rank "$r" --world 2 \
      --digest --json >"$WORK/ref$r.json" 2>&1 || { cat "$WORK/ref$r.json"; fail "reference read of rank $r"; }
    python3 - "$WORK/t$r.read.log" "$WORK/ref$r.json" <<'EOF' || fail "rank $r: the trainer's bytes differ from the dataset's"
import json, sys
got, want = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:])
for k in ("digest", "dataset_fingerprint", "sequences", "bytes"):
    assert got[k] == want[k], (k, got[k], want[k])
assert got["bytes"] > 0
print(f"rank digest {got['digest'][:16]}.. over {got['bytes']} bytes equals the local read")
EOF
    log "read: t$r read rank $r of 2 byte-exact (blake3 over every byte), sampled $TRAINER_SAMPLES times: no .seq file"
  done
  PASSED+=(read)
fi

HAVE_TORCH=0
if [[ -n "$PY" ]] && "$PY" -c "import torch, seqfeed" 2>/dev/null; then HAVE_TORCH=1; fi

# ---- python: seqfeed.Loader on each trainer; rows checked against the storage hosts' files
if [[ " $CHECKS " == *" python "* ]]; then
  [[ $HAVE_TORCH == 1 ]] || fail "python check asked for, but '$PY' cannot import torch and seqfeed"
  for r in 0 1; do
    trainer "t$r" python "$PY" "$HERE/rows.py" read --plan plan.toml --cluster cluster.toml \
      --dp-rank "$r" --dp-size 2 --out rows.npz
    [[ $TRAINER_RC == 0 ]] || { cat "$WORK/t$r.python.log"; fail "seqfeed.Loader on t$r"; }
    "$PY" "$HERE/rows.py" check --plan "$BUILD/plan.toml" --dataset "$BUILD/data" --storage "$STORE" \
      --rows "$WORK/t$r/rows.npz" --dp-rank "$r" --dp-size 2 >"$WORK/check$r.log" 2>&1 \
      || { cat "$WORK/check$r.log"; fail "t$r's rows"; }
    log "python: t$r: $(cat "$WORK/check$r.log"); sampled $TRAINER_SAMPLES times: no .seq file"
  done
  PASSED+=(python)
fi

# ---- torchrun: the example trainer across the two trainer hosts
if [[ " $CHECKS " == *" torchrun "* ]]; then
  [[ $HAVE_TORCH == 1 ]] || fail "torchrun check asked for, but '$PY' cannot import torch and seqfeed"
  EX="$REPO/crates/python/examples/train_gpt.py"
  ARGS=(--plan plan.toml --cluster cluster.toml --tp 2 --micro-batch 2 --out run)
  if [[ $MODE == netns ]]; then
    # Static rendezvous on t0's address inside the namespaces (nothing else
    # listens there); gloo on each host's eth0.
    for r in 1 0; do
      trainer "t$r" torchrun env GLOO_SOCKET_IFNAME=eth0 "$PY" -m torch.distributed.run \
        --nnodes 2 --nproc-per-node 2 --node-rank "$r" --master-addr "${ADDR[t0]}" --master-port 29500 \
        "$EX" "${ARGS[@]}" &
      eval "TR$r=\$!"
    done
    # shellcheck disable=SC2154
    wait "$TR0" || fail "torchrun on t0"; wait "$TR1" || fail "torchrun on t1"
    HOSTS=(t0 t1)
  else
    trainer t0 torchrun "$PY" -m torch.distributed.run --standalone --nproc-per-node 4 "$EX" "${ARGS[@]}"
    HOSTS=(t0)
  fi
  for h in "${HOSTS[@]}"; do
    [[ -s "$WORK/$h.torchrun.seq" ]] && fail "torchrun on $h: a trainer process mapped a .seq file"
    log "torchrun on $h: sampled $(cat "$WORK/$h.torchrun.seq.n") times: no .seq file"
  done
  "$PY" - "$WORK" "${HOSTS[@]}" <<'EOF' || { for h in "${HOSTS[@]}"; do tail -20 "$WORK/$h.torchrun.log"; done; fail "torchrun"; }
import json, pathlib, sys
work, hosts = pathlib.Path(sys.argv[1]), sys.argv[2:]
files = sorted(p for h in hosts for p in (work / h / "run").glob("rank*.jsonl"))
assert len(files) == 4, files
by_rank = {}
for p in files:
    lines = [json.loads(l) for l in p.read_text().splitlines()]
    assert lines[-1].get("done"), f"{p}: no done line"
    by_rank[int(p.stem[4:])] = [l for l in lines if "loss" in l]
for tp0, tp1 in ((0, 1), (2, 3)):
    assert [l["sha256"] for l in by_rank[tp0]] == [l["sha256"] for l in by_rank[tp1]], "TP peers differ"
assert [l["sha256"] for l in by_rank[0]] != [l["sha256"] for l in by_rank[2]], "DP ranks read the same rows"
losses = [l["loss"] for l in by_rank[0]]
first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
assert last < first, (first, last)
print(f"4 ranks finished {len(losses)} micro-batches each; rank 0 loss {first:.2f} -> {last:.2f}")
EOF
  log "torchrun: ran on ${HOSTS[*]} ($MODE) with no dataset on the trainers: TP peers identical, DP ranks different, loss falls"
  PASSED+=(torchrun)
fi

log "PASS ($MODE): ${PASSED[*]}: trainers holding only plan.toml and cluster.toml read from 2 storage hosts holding only their placed files"
