#!/bin/sh
# The soft-RoCE / RDMA checks, shared by the qemu guest (/init runs it) and by
# `scripts/rxe/run.sh host-test|host-bench` on a machine that has RDMA devices
# itself (kernel rxe, InfiniBand or RoCE hardware): the same binaries, no code change.
#
# usage: checks.sh test|bench|all [DEV0 [DEV1]]
# Needs on PATH: seqfeed-verbs-check, seqfeed-rxe-integration, seqfeed-node-verbs, seqfeed (test: also runs
# `seqfeed demo --transport verbs` and requires every rank to have read over verbs),
# seqfeed-rxe-bench (bench). Prints CHECK lines and, last, one line
#   RXE_RESULT: PASS mode=...   or   RXE_RESULT: FAIL mode=... failed: <checks>
# and exits non-zero on FAIL. A missing RDMA device is a FAIL.
MODE=${1:-test}
DEV0=${2:-}
DEV1=${3:-}
failed=""
fail() { failed="$failed $1"; echo "CHECK $1 FAIL $2"; }
ts() { echo "[T+$(cut -d' ' -f1 /proc/uptime)s] $*"; }

seqfeed-verbs-check devices || fail devices "no usable RDMA device"
if [ -z "$DEV0" ]; then
  DEV0=$(seqfeed-verbs-check devices 2>/dev/null | awk '$4=="ACTIVE"{print $1}' | head -1)
  DEV1=$(seqfeed-verbs-check devices 2>/dev/null | awk '$4=="ACTIVE"{print $1}' | sed -n 2p)
fi

if [ "$MODE" = test ] || [ "$MODE" = all ]; then
  # Verbs self-test on one device, then striped over two, then a node killed mid-run.
  timeout 180 seqfeed-verbs-check selftest "$DEV0" || fail "selftest-$DEV0" "exit $?"
  ts "selftest $DEV0 done"
  if [ -n "$DEV1" ]; then
    timeout 180 seqfeed-verbs-check selftest "$DEV0,$DEV1" || fail selftest-striped "exit $?"
    ts "selftest $DEV0,$DEV1 done"
  else
    echo "CHECK selftest-striped SKIP only one RDMA device"
  fi
  timeout 120 seqfeed-verbs-check killtest || fail killtest "exit $?"
  ts "killtest done"
  # Send queue deeper than the read depth (issue 10 item 1): at read depth 4, 16 and the
  # device maximum (capped on both sides), reads are byte-for-byte right and the send queue
  # is sized apart from the depth; prints one OCCUPANCY row per depth (information only:
  # rxe most likely executes reads inside ibv_post_send, so the client-side measure is not
  # the wire's; the occupancy target is asserted in crates/verbs/src/sendq/sim.rs).
  timeout 180 seqfeed-verbs-check depth "$DEV0" || fail depth "exit $?"
  ts "depth done"
  # Rails (issue 10 item 3): rxe0/rxe1 sit on dummy0/dummy1 in separate subnets, so only a
  # right pairing carries reads. Rail k pairs with node rail k (both rails must carry reads),
  # a rail map (0:1,1:0) pairs a node listing its devices the other way round, and pairing
  # that node by index must fail.
  if [ -n "$DEV1" ]; then
    timeout 180 seqfeed-verbs-check rails "$DEV0,$DEV1" || fail rails "exit $?"
    ts "rails done"
  else
    echo "CHECK rails SKIP only one RDMA device"
  fi
  # Fabric settings (issue 10 item 4): another RoCE v2 GID index than discovery's, with DSCP 26
  # and service level 3 on node and client, reads byte-exact; a GID index the port lacks is
  # refused naming the device, port and index.
  timeout 120 seqfeed-verbs-check fabric "$DEV0" || fail fabric "exit $?"
  ts "fabric done"
  # Completion handling (issue 10 item 6): long reads at depth 1, read once by a client that
  # only spins and once by one that spins 50 us then sleeps on its completion channel. Both
  # byte-exact; the sleeper must have slept and spent clearly less CPU per wall second.
  timeout 240 seqfeed-verbs-check sleep "$DEV0" || fail sleep "exit $?"
  ts "sleep done"
  # rdma_cm set-up (issue 10 item 4): QPs connected with librdmacm (address and route resolved
  # by the kernel) instead of the control-service exchange, reads byte-exact over both rails and
  # after a rebuild; a node without a listener, an address nobody holds, a port nothing listens
  # on and a token the node never granted each fail within the timeout, naming the step.
  clog=${TMPDIR:-/tmp}/seqfeed-cm.log
  timeout 180 seqfeed-verbs-check cm "$DEV0${DEV1:+,$DEV1}" >"$clog" 2>&1
  crc=$?
  grep '^CHECK' "$clog"
  if [ "$crc" = 0 ] && ! grep -q '^CHECK [^ ]* FAIL' "$clog"; then
    echo "CHECK cm PASS $(grep -c '^CHECK cm-[^ ]* PASS' "$clog") rdma_cm checks passed"
  else
    tail -20 "$clog"
    fail cm "seqfeed-verbs-check cm (exit $crc)"
  fi
  ts "cm done"
  # Storage nodes + four ranks through the real control service and loader, byte for byte
  # against the files and the plan; then a node shut down with the replica taking over.
  log=${TMPDIR:-/tmp}/seqfeed-rxe-integration.log
  SEQFEED_REQUIRE_RDMA=1 timeout 240 seqfeed-rxe-integration --test-threads=1 --nocapture >"$log" 2>&1
  if grep -q '^test result: ok' "$log"; then
    echo "CHECK integration PASS $(grep '^test result' "$log")"
  else
    cat "$log"
    fail integration "node+ranks over verbs: $(grep -E 'panicked|FAILED|test result' "$log" | head -3 | tr '\n' ' ')"
  fi
  ts "integration done"
  # The node's real verbs acceptor over its control service: the read depth it answers is
  # min(client, device), and a connection's QPs are destroyed when it closes (node count and
  # the kernel's `rdma resource show qp`). Then (issue 10 item 2) 1,000 injected QP rebuilds
  # of one client, each naming the node QP it replaces: the node's QP count (its own and the
  # kernel's) stays bounded while a second client reads byte-exact without an error.
  nlog=${TMPDIR:-/tmp}/seqfeed-node-verbs.log
  SEQFEED_REQUIRE_RDMA=1 timeout 300 seqfeed-node-verbs --test-threads=1 --nocapture >"$nlog" 2>&1
  if grep -q '^test result: ok. 2 passed' "$nlog"; then
    echo "CHECK node-qps PASS $(grep '^depths' "$nlog")"
    echo "CHECK qp-replace PASS $(grep -o 'rebuilds: A .*' "$nlog")"
  else
    cat "$nlog"
    fail node-qps "node verbs acceptor / QP replacement: $(grep -E 'panicked|FAILED|test result' "$nlog" | head -3 | tr '\n' ' ')"
  fi
  ts "node-qps done"
  # The CLI: starts, and `auto` picks verbs here (and says why).
  if seqfeed --help >/dev/null 2>&1; then echo "CHECK seqfeed-cli PASS seqfeed starts"; else fail seqfeed-cli "seqfeed --help failed"; fi
  # The main job over verbs: `seqfeed demo` with in-process nodes accepting RDMA queue pairs,
  # four ranks, every byte checked against the files and the plan; it must pass and report
  # that every node connection of every rank used verbs (`transports: verbs=N`, nothing else),
  # both with `--transport verbs` and with `auto` (which must pick verbs here). The nodes must
  # also have released every queue pair once the ranks left.
  for kind in verbs auto; do
    dlog=${TMPDIR:-/tmp}/seqfeed-demo-$kind.log
    timeout 240 seqfeed --log warn demo --transport $kind --steps 8 >"$dlog" 2>&1
    drc=$?
    if [ "$drc" = 0 ] && grep -q '^demo OK' "$dlog" && grep -qE '^transports: verbs=[1-9][0-9]*$' "$dlog" \
       && [ "$(grep -c 'verbs QPs open after the ranks left: 0$' "$dlog")" -ge 1 ] \
       && ! grep -qE 'verbs QPs open after the ranks left: [1-9]' "$dlog"; then
      echo "CHECK demo-$kind PASS $(grep '^transports:' "$dlog"); $(grep -c 'verbs QPs open after the ranks left: 0$' "$dlog") nodes hold 0 QPs after the ranks left; $(grep '^demo OK' "$dlog")"
    else
      tail -40 "$dlog"
      fail "demo-$kind" "seqfeed demo --transport $kind (exit $drc): $(grep -E '^(transports|demo |seqfeed: error)' "$dlog" | tr '\n' ' ')"
    fi
    ts "demo-$kind done"
  done
  # The same job with every rank's QPs connected by rdma_cm (SEQFEED_VERBS_CONNECT=cm; the
  # in-process nodes listen for it): real control service, quotas and QP teardown, reads
  # byte-exact, every node holding 0 QPs after the ranks left.
  dlog=${TMPDIR:-/tmp}/seqfeed-demo-cm.log
  SEQFEED_VERBS_CONNECT=cm timeout 240 seqfeed --log warn,seqfeed_verbs=info demo --transport verbs --steps 8 >"$dlog" 2>&1
  drc=$?
  ncm=$(grep -c 'verbs: connected.*connect=Cm' "$dlog")
  nctl=$(grep -c 'verbs: connected.*connect=Control' "$dlog")
  if [ "$drc" = 0 ] && grep -q '^demo OK' "$dlog" && grep -qE '^transports: verbs=[1-9][0-9]*$' "$dlog" \
     && [ "$ncm" -ge 1 ] && [ "$nctl" = 0 ] \
     && [ "$(grep -c 'verbs QPs open after the ranks left: 0$' "$dlog")" -ge 1 ] \
     && ! grep -qE 'verbs QPs open after the ranks left: [1-9]' "$dlog"; then
    echo "CHECK demo-cm PASS $(grep '^transports:' "$dlog"); $ncm transports connected with rdma_cm, 0 by exchange; $(grep -c 'verbs QPs open after the ranks left: 0$' "$dlog") nodes hold 0 QPs after the ranks left; $(grep '^demo OK' "$dlog")"
  else
    tail -40 "$dlog"
    fail demo-cm "SEQFEED_VERBS_CONNECT=cm seqfeed demo --transport verbs (exit $drc, $ncm cm / $nctl exchange connects): $(grep -E '^(transports|demo |seqfeed: error)' "$dlog" | tr '\n' ' ')"
  fi
  ts "demo-cm done"
  # The CLI end to end (issue 10 item 4): `seqfeed serve --verbs --verbs-cm-port` serves a
  # generated dataset, and `seqfeed read --transport verbs --verbs-connect cm --verify`
  # reads it through that node, byte-exact against the files.
  d=${TMPDIR:-/tmp}/seqfeed-cli-cm
  rm -rf "$d" "$d.addr"
  seqfeed --log warn demo --keep "$d" --transport tcp --steps 4 >"$d.demo.log" 2>&1
  seqfeed --log warn,seqfeed_verbs=info serve --dataset "$d" --listen 127.0.0.1:0 --addr-file "$d.addr" \
    --verbs --verbs-cm-port 7472 >"$d.serve.log" 2>&1 &
  spid=$!
  i=0; while [ ! -s "$d.addr" ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
  timeout 120 seqfeed --log warn,seqfeed_verbs=info read --plan "$d/plan.toml" \
    --dataset "$d" --node "$(cat "$d.addr" 2>/dev/null)" --transport verbs --verbs-connect cm --verify >"$d.read.log" 2>&1
  rrc=$?
  kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
  if [ "$rrc" = 0 ] && grep -q '^  verified: .*: OK$' "$d.read.log" && grep -q 'connect=Cm' "$d.read.log" \
     && grep -q 'rdma_cm listener up' "$d.serve.log"; then
    echo "CHECK cli-cm PASS seqfeed serve --verbs-cm-port 7472 + seqfeed read --transport verbs --verbs-connect cm: $(grep '^  verified:' "$d.read.log" | sed 's/^ *//')"
  else
    tail -20 "$d.demo.log" "$d.serve.log" "$d.read.log"
    fail cli-cm "seqfeed serve --verbs-cm-port / read over rdma_cm (exit $rrc)"
  fi
  ts "cli-cm done"
fi

if [ "$MODE" = bench ] || [ "$MODE" = all ]; then
  # 2 sizes x 1-2 QPs x (device depth, capped at 16, capped at 4), each against ib_read_bw.
  timeout 900 seqfeed-rxe-bench || fail bench "exit $?"
  ts "bench done"
fi

if [ -z "$failed" ]; then
  echo "RXE_RESULT: PASS mode=$MODE devices=$DEV0${DEV1:+,$DEV1}"
else
  echo "RXE_RESULT: FAIL mode=$MODE failed:$failed"
  exit 1
fi
