#!/bin/sh
# The soft-RoCE / RDMA checks, shared by the qemu guest (/init runs it) and by
# `scripts/rxe/run.sh host-test|host-bench` on a machine that has RDMA devices
# itself (kernel rxe, InfiniBand or RoCE hardware): the same binaries, no code change.
#
# usage: checks.sh test|bench|all|odp [DEV0 [DEV1]]
# Needs on PATH: seqfeed-verbs-check, seqfeed-rxe-integration, seqfeed-node-verbs, seqfeed (test: also runs
# `seqfeed demo --transport verbs` and requires every rank to have read over verbs),
# seqfeed-rxe-bench (bench). test and odp also run a node as the unprivileged user `seqfeed`
# under a small RLIMIT_MEMLOCK (needs root, su and that user; the guest has them: RXE_GUEST=1
# makes their absence a FAIL, elsewhere a SKIP). Prints CHECK lines and, last, one line
#   RXE_RESULT: PASS mode=...   or   RXE_RESULT: FAIL mode=... failed: <checks>
# and exits non-zero on FAIL. A missing RDMA device is a FAIL.
MODE=${1:-test}
DEV0=${2:-}
DEV1=${3:-}
failed=""
fail() { failed="$failed $1"; echo "CHECK $1 FAIL $2"; }
ts() { echo "[T+$(cut -d' ' -f1 /proc/uptime)s] $*"; }

seqfeed-verbs-check devices || fail devices "no usable RDMA device"

# ---- the node's memory budget on the real device (issue 10 item 7) -------------------------
# A dataset from `seqfeed demo --keep`, served by `seqfeed serve --verbs` on DEV0[,DEV1] as the
# unprivileged user `seqfeed` (no CAP_IPC_LOCK) under a small `ulimit -l`, read by a client
# (root) with `seqfeed read --transport verbs --verify`: every byte compared with the files.
#   no ODP (6.1's rxe): under 64 KiB the node must refuse, exit 1, naming the numbers (pinning
#     needs devices x the served .seq bytes) and the fix, not OOM; with the limit just above
#     that it must serve byte-exact, and its VmPin must cover what it registered;
#   ODP for RC READ on every device: under 64 KiB it must serve byte-exact with nothing
#     pinned (log: pinning=[], on_demand=[devices]; VmPin 0 kB): more than it can pin.
# odp_of DEV: the device's odp_rc_read as `seqfeed-verbs-check devices` reports it.
odp_of() { seqfeed-verbs-check devices 2>/dev/null | awk -v d="$1" '$1 == d { for (i = 1; i < NF; i++) if ($i == "odp_rc_read") print $(i + 1) }'; }
# as_user KIB CMD: CMD (a shell string) as user `seqfeed` under `ulimit -l KIB`.
as_user() { ( ulimit -l "$1" && exec su -s /bin/sh seqfeed -c "$2" ); }
oom_count() { dmesg | grep -ciE 'out of memory|oom-kill|invoked oom-killer'; }
# memcheck [NAME [xfail]]: the ODP variant (CHECK odp) or the pinning one (CHECK
# memlock-refusal), as the devices offer; `xfail` reports a failure as XFAIL (a known issue,
# not counted) and a pass as XPASS.
memcheck() {
  devs=$DEV0${DEV1:+,$DEV1}; ndev=1; [ -n "$DEV1" ] && ndev=2
  odp=$(odp_of "$DEV0"); [ -n "$DEV1" ] && [ "$(odp_of "$DEV1")" != true ] && odp=false
  name=memlock-refusal; [ "$odp" = true ] && name=odp
  name=${1:-$name}; xf=${2:-}
  mfail() { if [ -n "$xf" ]; then echo "CHECK $1 XFAIL $2 (known issue, not counted: scripts/rxe/README.md)"; else fail "$1" "$2"; fi; }
  if [ "$(id -u)" != 0 ] || ! id seqfeed >/dev/null 2>&1 || ! command -v su >/dev/null; then
    why="needs root, su and a user named seqfeed (uid $(id -u); $(id seqfeed 2>&1))"
    if [ -n "${RXE_GUEST:-}" ]; then mfail "$name" "$why"; else echo "CHECK $name SKIP $why"; fi
    return
  fi
  w=${TMPDIR:-/tmp}/seqfeed-mem; rm -rf "$w/run"; mkdir -p "$w/run"; chown seqfeed "$w/run"
  if [ ! -s "$w/ds/plan.toml" ] && ! seqfeed --log warn demo --keep "$w/ds" --steps 16 --global-batch 64 --seq-len 2048 >"$w/demo.log" 2>&1; then
    tail -20 "$w/demo.log"; mfail "$name" "building the dataset (seqfeed demo --keep) failed"; return
  fi
  seq_bytes=$(find "$w/ds" -name '*.seq' -exec cat {} + | wc -c)
  seq_files=$(find "$w/ds" -name '*.seq' | wc -l)
  need=$((seq_bytes * ndev))
  # ODP is opt-in (SEQFEED_VERBS_ODP defaults to never): the ODP variant asks for `auto`.
  odp_env=""; [ "$odp" = true ] && odp_env="env SEQFEED_VERBS_ODP=auto "
  serve_cmd="exec ${odp_env}seqfeed --log info serve --dataset $w/ds --listen 127.0.0.1:0 --verbs --verbs-device $devs --threads 2 --addr-file $w/run/addr"
  # serve_and_read KIB LABEL: a node as `seqfeed` under KIB, a verifying client; sets got, vmpin.
  serve_and_read() {
    rm -f "$w/run/addr"
    ( ulimit -l "$1" && exec su -s /bin/sh seqfeed -c "$serve_cmd" ) >"$w/serve-$2.log" 2>&1 &
    spid=$!
    i=0; while [ ! -s "$w/run/addr" ] && [ $i -lt 600 ] && kill -0 $spid 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
    if [ ! -s "$w/run/addr" ]; then
      kill $spid 2>/dev/null; wait $spid 2>/dev/null; tail -20 "$w/serve-$2.log"
      got="the node did not start under ulimit -l $1: $(grep 'seqfeed: error' "$w/serve-$2.log")"; return 1
    fi
    timeout 180 seqfeed --log warn read --dataset "$w/ds" --plan "$w/ds/plan.toml" --node "$(cat "$w/run/addr")" \
      --transport verbs --verify >"$w/read-$2.log" 2>&1
    rrc=$?
    vmpin=$(awk '/^VmPin:/ {print $2 " " $3}' /proc/$spid/status 2>/dev/null)
    whoami_node=$(awk '/^Uid:/ {print $2}' /proc/$spid/status 2>/dev/null)
    caps=$(awk '/^CapEff:/ {print $2}' /proc/$spid/status 2>/dev/null)
    kill $spid 2>/dev/null; wait $spid 2>/dev/null
    if [ $rrc != 0 ] || ! grep -q 'verified: .* OK' "$w/read-$2.log"; then
      tail -20 "$w/read-$2.log"; tail -20 "$w/serve-$2.log"
      got="seqfeed read --transport verbs --verify (exit $rrc): $(grep -E 'seqfeed: error|FAILED' "$w/read-$2.log" | head -2)"; return 1
    fi
    got="node uid $whoami_node (CapEff $caps) under ulimit -l $1 KiB served $seq_files files, $seq_bytes bytes on $devs: $(grep -o 'verified: [0-9]* bytes' "$w/read-$2.log") byte-exact over verbs; node VmPin $vmpin"
  }
  oom0=$(oom_count)
  if [ "$odp" = true ]; then
    if ! serve_and_read 64 odp; then dmesg | tail -20; mfail "$name" "$got"; return; fi
    line=$(grep 'memory to register fits' "$w/serve-odp.log")
    if ! echo "$line" | grep -q 'pinning=\[\]' || ! echo "$line" | grep -q "on_demand=\[\"$DEV0\""; then
      mfail "$name" "the node did not register with on-demand paging: ${line:-no 'memory to register fits' line}"; return
    fi
    if [ "$vmpin" != "0 kB" ] || [ "$seq_bytes" -le $((64 * 1024 * 16)) ] || [ "$(oom_count)" != "$oom0" ]; then
      mfail "$name" "$got; want VmPin 0 kB, data > 16x the 64 KiB limit, no OOM"; return
    fi
    echo "CHECK $name ${xf:+X}PASS ODP (IBV_ACCESS_ON_DEMAND) on $devs: $got; log: $(echo "$line" | grep -oE 'pinning=[^ ]* on_demand=\[[^]]*\]')"
    return
  fi
  # No ODP: refused under 64 KiB with the numbers and the fix.
  as_user 64 "$serve_cmd" >"$w/refused.log" 2>&1
  rc=$?
  msg=$(grep 'seqfeed: error' "$w/refused.log")
  bad=""
  [ $rc = 1 ] || bad="$bad exit $rc (want 1);"
  [ ! -s "$w/run/addr" ] || bad="$bad it listened;"
  [ "$(oom_count)" = "$oom0" ] || bad="$bad OOM in dmesg;"
  for want in "serves " "in $seq_files files" "$(echo "$devs" | sed 's/,/, /')" "RLIMIT_MEMLOCK is 64.0 KiB (65536 bytes)" \
              "pinning needs" "($need bytes)" "ulimit -l unlimited" "LimitMEMLOCK=infinity" \
              "/etc/security/limits.conf" "--ulimit memlock=-1"; do
    case "$msg" in *"$want"*) ;; *) bad="$bad no '$want';" ;; esac
  done
  if [ -n "$bad" ]; then cat "$w/refused.log"; mfail "$name" "refusal under ulimit -l 64:$bad"; return; fi
  # Enough: the need plus 1 MiB (page rounding of each registration).
  kib=$((need / 1024 + 1024))
  if ! serve_and_read $kib pinned; then mfail "$name" "$got"; return; fi
  pinned_kib=${vmpin% kB}
  if ! grep 'memory to register fits' "$w/serve-pinned.log" | grep -q "pinning=\[\"$DEV0\"" \
     || [ "${pinned_kib:-0}" -lt $((need / 1024)) ] || [ "$(oom_count)" != "$oom0" ]; then
    mfail "$name" "$got; want the devices pinning, VmPin >= $((need / 1024)) kB, no OOM"; return
  fi
  echo "CHECK $name PASS refused under ulimit -l 64 as uid $(id -u seqfeed) (exit 1, no OOM): '${msg#seqfeed: error: }'; then $got"
}

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
  # A trainer that holds no data (issue 16): two nodes, each serving its own directory
  # (`seqfeed place --stage`: every manifest, only the files placed on it, one replica), and
  # `seqfeed read --transport verbs` from a directory holding plan.toml and cluster.toml only:
  # the plan comes from the nodes' manifests, the digest of every byte read equals a local read
  # of the full dataset, and the reader's /proc maps and fds never show a .seq file.
  d=${TMPDIR:-/tmp}/seqfeed-nodata
  rm -rf "$d"; mkdir -p "$d/stage" "$d/trainer"
  ndfail=""
  seqfeed --log warn demo --keep "$d/ds" --transport tcp --steps 6 >"$d.demo.log" 2>&1 || ndfail="seqfeed demo --keep"
  # Placeholder addresses: the nodes pick their ports, the trainer's copy gets the real ones.
  [ -z "$ndfail" ] && { seqfeed --log warn place --dataset "$d/ds" --nodes a=127.0.0.1:1,b=127.0.0.1:2 --replicas 1 \
    --out "$d/cluster.toml" --stage "$d/stage" >"$d.place.log" 2>&1 || ndfail="seqfeed place --stage"; }
  ndpids=""
  cp "$d/ds/plan.toml" "$d/trainer/plan.toml" 2>/dev/null; cp "$d/cluster.toml" "$d/trainer/cluster.toml" 2>/dev/null
  for n in a b; do
    [ -n "$ndfail" ] && break
    seqfeed --log warn serve --dataset "$d/stage/$n" --cluster "$d/cluster.toml" --name "$n" --listen 127.0.0.1:0 \
      --verbs --threads 2 --addr-file "$d/$n.addr" >"$d.$n.log" 2>&1 &
    ndpids="$ndpids $!"
    i=0; while [ ! -s "$d/$n.addr" ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i + 1)); done
    [ -s "$d/$n.addr" ] || { ndfail="node $n did not start: $(tail -2 "$d.$n.log" | tr '\n' ' ')"; break; }
    port=1; [ "$n" = b ] && port=2
    sed -i "s/\"127.0.0.1:$port\"/\"$(cat "$d/$n.addr")\"/" "$d/trainer/cluster.toml"
  done
  if [ -z "$ndfail" ]; then
    ( cd "$d/trainer" && exec timeout 120 seqfeed --log warn read --plan plan.toml --cluster cluster.toml \
      --transport verbs --digest --json --consume-us 20000 ) >"$d.read.json" 2>"$d.read.log" &
    rpid=$!; samples=0; : >"$d.seq"
    while kill -0 $rpid 2>/dev/null; do
      grep '\.seq' /proc/$rpid/maps >>"$d.seq" 2>/dev/null
      ls -l /proc/$rpid/fd 2>/dev/null | grep '\.seq' >>"$d.seq"
      samples=$((samples + 1)); sleep 0.1
    done
    wait $rpid; rrc=$?
    seqfeed --log warn read --plan "$d/ds/plan.toml" --dataset "$d/ds" --local --digest --json >"$d.ref.json" 2>&1
    got=$(grep -o '"digest":"[0-9a-f]*"' "$d.read.json"); want=$(grep -o '"digest":"[0-9a-f]*"' "$d.ref.json")
    held_a=$(find "$d/stage/a" -name '*.seq' | wc -l); held_b=$(find "$d/stage/b" -name '*.seq' | wc -l)
    if [ $rrc != 0 ]; then ndfail="seqfeed read --transport verbs from the trainer directory (exit $rrc): $(grep 'seqfeed: error' "$d.read.log")"
    elif [ -s "$d.seq" ]; then ndfail="the reader mapped or opened a .seq file: $(head -2 "$d.seq" | tr '\n' ' ')"
    elif [ -z "$got" ] || [ "$got" != "$want" ]; then ndfail="digest $got differs from the local read's $want"
    elif [ "$(ls "$d/trainer" | tr '\n' ' ')" != "cluster.toml plan.toml " ]; then ndfail="the trainer directory holds more than plan.toml and cluster.toml"
    fi
  fi
  for p in $ndpids; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [ -z "$ndfail" ]; then
    echo "CHECK trainer-no-data PASS a trainer holding plan.toml and cluster.toml only read over verbs from 2 nodes (a: $held_a files, b: $held_b files, one replica), $got equal to the local read; $samples samples of /proc: no .seq file"
  else
    tail -5 "$d.read.log" "$d.a.log" "$d.b.log" 2>/dev/null
    fail trainer-no-data "$ndfail"
  fi
  ts "trainer-no-data done"
  # RLIMIT_MEMLOCK on the real device: refusal and enough (no ODP), or ODP serving beyond it.
  memcheck
  ts "memlock done"
fi

if [ "$MODE" = odp ]; then
  # On-demand paging: the device must offer it for RC RDMA READ (ibv_devinfo shows the kernel's
  # caps), and a node must serve more than it may pin. Known issues of Linux 7.3.4's rxe (see
  # scripts/rxe/README.md) are run and reported as XFAIL/XPASS, not counted.
  seqfeed-verbs-check devices 2>/dev/null | sed 's/^/ODPCAPS seqfeed-verbs-check devices: /'
  command -v ibv_devinfo >/dev/null && ibv_devinfo -v -d "$DEV0" | grep -A8 -E 'odp_caps' | sed "s/^/ODPCAPS ibv_devinfo -v -d $DEV0: /"
  if [ "$(odp_of "$DEV0")" = true ]; then
    # 1. The ODP node as the boot's first RDMA traffic: on 7.3.4 its reads never complete.
    memcheck odp-first-traffic xfail
    ts "odp-first-traffic done"
    # 2. Pinned reads on this kernel (SEQFEED_VERBS_ODP=0): the in-process self-test.
    SEQFEED_VERBS_ODP=0 timeout 180 seqfeed-verbs-check selftest "$DEV0" >/tmp/st-pinned.log 2>&1 \
      && echo "CHECK selftest-pinned PASS $(grep -c ' PASS ' /tmp/st-pinned.log) sub-checks (SEQFEED_VERBS_ODP=0: every region pinned)" \
      || { grep '^CHECK' /tmp/st-pinned.log; fail selftest-pinned "seqfeed-verbs-check selftest $DEV0 with SEQFEED_VERBS_ODP=0"; }
    ts "selftest-pinned done"
    # 3. The ODP node under ulimit -l 64 (ODP_REPEAT times, from RXE_ODP_REPEAT): counted.
    r=0; while [ $r -lt "${ODP_REPEAT:-1}" ]; do memcheck; r=$((r + 1)); done
    ts "odp done"
    # 4. The self-test with ODP forced (SEQFEED_VERBS_ODP=always: as root it could pin, and
    # auto would), regions in anonymous memory: on 7.3.4 reads complete with wrong bytes.
    if SEQFEED_VERBS_ODP=always timeout 180 seqfeed-verbs-check selftest "$DEV0" >/tmp/st-odp.log 2>&1; then
      echo "CHECK selftest-odp XPASS $(grep -c ' PASS ' /tmp/st-odp.log) sub-checks byte-exact with ODP regions"
    else
      echo "CHECK selftest-odp XFAIL $(grep -c ' FAIL ' /tmp/st-odp.log) of $(grep -c '^CHECK' /tmp/st-odp.log) sub-checks failed, first: $(grep -m1 ' FAIL ' /tmp/st-odp.log | cut -c1-240) (known issue, not counted: scripts/rxe/README.md)"
    fi
    ts "selftest-odp done"
  else
    fail odp "$DEV0 offers no on-demand paging for RC RDMA READ (kernel $(uname -r))"
  fi
  # 5. The kernel's READ path without seqfeed, as information: perftest's ib_read_bw with and
  # without --odp (anonymous memory, 64 KiB reads over loopback; it does not check the bytes).
  if command -v ib_read_bw >/dev/null; then
    gi=$(seqfeed-verbs-check devices 2>/dev/null | awk -v d="$DEV0" '$1 == d { sub(/^gid\[/, "", $6); sub(/\].*/, "", $6); print $6 }')
    for odpflag in "" --odp; do
      timeout 60 ib_read_bw -d "$DEV0" -x "${gi:-1}" -F -s 65536 -n 200 $odpflag >/tmp/ibrb-s.log 2>&1 &
      bpid=$!; sleep 2
      timeout 40 ib_read_bw -d "$DEV0" -x "${gi:-1}" -F -s 65536 -n 200 $odpflag 127.0.0.1 >/tmp/ibrb-c.log 2>&1
      brc=$?; kill $bpid 2>/dev/null; wait $bpid 2>/dev/null
      echo "ODPCAPS ib_read_bw -d $DEV0 -s 65536 -n 200 ${odpflag:-(pinned)}: exit $brc $(awk '$1 == 65536 {print "BW MB/s " $4}' /tmp/ibrb-c.log) $(grep -iE 'error|fail|couldn' /tmp/ibrb-c.log | head -2 | tr '\n' ' ')"
    done
  fi
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
