#!/usr/bin/env bash
# Real soft-RoCE (kernel rdma_rxe) tests and benchmarks in a qemu guest, for hosts
# whose kernel has no RDMA (or no rxe). One command on a fresh Debian 12 machine
# with Rust installed:
#
#   scripts/rxe/run.sh test     # verbs self-tests + node/ranks over rxe (what .ci/run runs)
#   scripts/rxe/run.sh bench    # verbs vs ib_read_bw vs tcp, printed as ratios
#   scripts/rxe/run.sh all      # both in one boot
#   scripts/rxe/run.sh host-test|host-bench|host-all
#                               # the same checks directly on this host, for machines whose
#                               # kernel has RDMA (rxe: `rdma link add rxe0 type rxe netdev IFACE`,
#                               # or InfiniBand / RoCE hardware); no VM, no code change
#
# What it does: apt-installs the host tools it needs, builds the project's release
# binaries, downloads Debian's generic kernel package (which ships rdma_rxe; the
# version is resolved at run time from `apt-cache depends linux-image-amd64`),
# builds an initramfs (busybox, the kernel modules, rdma-core's rxe provider,
# perftest, our binaries), boots it with `qemu -accel tcg`, brings up rxe0 on
# dummy0 and rxe1 on dummy1, runs the checks and prints one line
#   RXE_RESULT: PASS ...   or   RXE_RESULT: FAIL ...
# Exit code: 0 on PASS, 1 on FAIL (including a missing device), 2 on harness errors.
#
# Downloads and build products are cached under .vm/ (gitignored).
# Env: RXE_TIMEOUT (guest wall limit, s; default 540, 1200 with the bench), RXE_MEM (MiB, 2048),
#      RXE_SMP (2), RXE_BENCH_SCALE (bench iterations multiplier, 1),
#      RXE_SKIP_BUILD=1 (reuse binaries already in target/release).
set -euo pipefail

MODE=${1:-test}
case "$MODE" in
  test|bench|all|host-test|host-bench|host-all) ;;
  *) echo "usage: $0 test|bench|all|host-test|host-bench|host-all" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/scripts/rxe"
VM="$ROOT/.vm"
mkdir -p "$VM/debs"
# One harness run at a time per checkout: runs share the .vm/ cache (root fs, initrd, logs).
exec 9>"$VM/.lock"
if ! flock -w 900 9; then echo "[rxe] another run.sh holds $VM/.lock for over 15 min" >&2; exit 2; fi
log() { echo "[rxe] $*" >&2; }
t_start=$(date +%s)

# ---- 1. host tools ---------------------------------------------------------------
need=(qemu-system-x86 busybox-static rdma-core ibverbs-providers libibverbs1 perftest
      iproute2 cpio kmod xz-utils cmake libclang-dev gcc)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- 2. project binaries ---------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET_DIR/release"
GUEST_BINS=(seqfeed-verbs-check seqfeed)
if [[ "${RXE_SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries (${GUEST_BINS[*]}, rxe integration test, benchmark)"
  (cd "$ROOT" && cargo build --release -q -p seqfeed-verbs --bins)
  (cd "$ROOT" && cargo build --release -q -p seqfeed --bin seqfeed)
  # The node + loader integration test over verbs (tests/tests/rxe.rs), as a guest binary.
  rm -rf "$VM/guest-tests"; mkdir -p "$VM/guest-tests"
  exe=$(cd "$ROOT" && cargo test --release -q -p seqfeed-tests --test rxe --no-run --message-format=json 2>/dev/null |
        grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
  [[ -x "$exe" ]] || { log "could not build the rxe integration test"; exit 2; }
  cp "$exe" "$VM/guest-tests/seqfeed-rxe-integration"
  # The node's real verbs acceptor (crates/node/tests/verbs_real.rs): read depth, QPs freed on close.
  exe=$(cd "$ROOT" && cargo test --release -q -p seqfeed-node --test verbs_real --no-run --message-format=json 2>/dev/null |
        grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
  [[ -x "$exe" ]] || { log "could not build the node verbs test"; exit 2; }
  cp "$exe" "$VM/guest-tests/seqfeed-node-verbs"
  # The benchmark (benches/benches/rxe_verbs.rs) for bench mode.
  if [[ "$MODE" != test && "$MODE" != host-test ]]; then
    exe=$(cd "$ROOT" && cargo bench -q -p seqfeed-benches --bench rxe_verbs --no-run --message-format=json 2>/dev/null |
          grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
    [[ -x "$exe" ]] || { log "could not build the rxe_verbs benchmark"; exit 2; }
    cp "$exe" "$VM/guest-tests/seqfeed-rxe-bench"
  fi
fi
for b in "${GUEST_BINS[@]}"; do
  [[ -x "$BIN/$b" ]] || { log "missing $BIN/$b (build failed?)"; exit 2; }
done

# ---- host mode: run the checks right here ----------------------------------------
if [[ "$MODE" == host-* ]]; then
  hb=$(mktemp -d); trap 'rm -rf "$hb"' EXIT
  for b in "${GUEST_BINS[@]}"; do ln -s "$BIN/$b" "$hb/$b"; done
  for t in "$VM"/guest-tests/*; do ln -s "$t" "$hb/$(basename "$t")"; done
  PATH="$hb:$PATH" sh "$HERE/checks.sh" "${MODE#host-}" ${RXE_DEVICES:-}
  exit $?
fi

# ---- 3. kernel with rdma_rxe -----------------------------------------------------
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [[ -z "$KPKG" ]]; then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
[[ -n "$KPKG" ]] || { log "cannot resolve the kernel package behind linux-image-amd64"; exit 2; }
KVER=${KPKG#linux-image-}
KDIR="$VM/kernel-$KVER"
if [[ ! -f "$KDIR/.done" ]]; then
  log "fetching $KPKG"
  rm -rf "$KDIR"; mkdir -p "$KDIR"
  (cd "$VM/debs" && ls "${KPKG}"_*.deb >/dev/null 2>&1 || apt-get download -q "$KPKG" >/dev/null 2>&1)
  dpkg -x "$(ls "$VM/debs/${KPKG}"_*.deb | head -1)" "$KDIR/pkg"
  [[ -f "$KDIR/pkg/lib/modules/$KVER/kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko" ]] ||
    { log "$KPKG has no rdma_rxe.ko"; exit 2; }
  /sbin/depmod -b "$KDIR/pkg" "$KVER"
  # Uncompressed vmlinux boots through PVH ~5 s faster; fall back to vmlinuz without python3.
  if command -v python3 >/dev/null; then
    python3 - "$KDIR/pkg/boot/vmlinuz-$KVER" "$KDIR/vmlinux" <<'PY' || rm -f "$KDIR/vmlinux"
import lzma, sys
d = open(sys.argv[1], 'rb').read()
i = d.find(b'\xfd7zXZ\x00')
open(sys.argv[2], 'wb').write(lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:]))
PY
  fi
  touch "$KDIR/.done"
fi
KERNEL="$KDIR/vmlinux"; [[ -s "$KERNEL" ]] || KERNEL="$KDIR/pkg/boot/vmlinuz-$KVER"

# ---- 4. initramfs ----------------------------------------------------------------
R="$VM/root"
rm -rf "$R"
mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,tmp,run,usr/bin,usr/sbin,lib64,data}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do
  [[ "$a" == busybox ]] || ln -sf /bin/busybox "$R/bin/$a"
done
ln -sf /bin/busybox "$R/sbin/modprobe"

KSRC="$KDIR/pkg/lib/modules/$KVER"
MODS="rdma_rxe ib_uverbs ib_core udp_tunnel ip6_udp_tunnel crc32_generic dummy rdma_ucm"
want=()
for m in $MODS; do
  line=$(grep -E "/(${m}|${m//_/-})\.ko:" "$KSRC/modules.dep" | head -1)
  [[ -n "$line" ]] || { log "module $m not found in $KPKG"; exit 2; }
  want+=("${line%%:*}" ${line#*:})
done
for f in $(printf '%s\n' "${want[@]}" | sort -u); do
  mkdir -p "$R/lib/modules/$KVER/$(dirname "$f")"
  cp "$KSRC/$f" "$R/lib/modules/$KVER/$f"
done
cp "$KSRC"/modules.order "$KSRC"/modules.builtin* "$R/lib/modules/$KVER/" 2>/dev/null || true
/sbin/depmod -b "$R" "$KVER"

copy_with_libs() {
  local f=$1 dest=${2:-$1}
  mkdir -p "$R$(dirname "$dest")"
  cp -L "$f" "$R$dest"
  ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^\s*\/.*ld-linux/{print $1}' | while read -r l; do
    [[ -e "$R$l" ]] && continue
    mkdir -p "$R$(dirname "$l")"
    cp -L "$l" "$R$l"
  done
}
LIBDIR=/usr/lib/x86_64-linux-gnu
for b in /usr/bin/ib_read_bw /usr/bin/rdma \
         "$LIBDIR/libibverbs.so.1" "$LIBDIR/libibverbs/librxe-rdmav34.so" "$LIBDIR/librdmacm.so.1"; do
  copy_with_libs "$b"
done
for b in "${GUEST_BINS[@]}"; do copy_with_libs "$BIN/$b" "/usr/bin/$b"; done
# Extra guest test binaries (e.g. the node/loader rxe integration test), if built.
for t in "$VM"/guest-tests/*; do
  [[ -x "$t" ]] && copy_with_libs "$t" "/usr/bin/$(basename "$t")"
done
cp -L "$LIBDIR/libgcc_s.so.1" "$R$LIBDIR/"    # glibc dlopens it; ldd does not show it
cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
if [[ -d "$R/lib/x86_64-linux-gnu" ]]; then     # merged /usr: make both paths work
  mkdir -p "$R$LIBDIR"
  cp -a "$R/lib/x86_64-linux-gnu/." "$R$LIBDIR/"
  rm -rf "$R/lib/x86_64-linux-gnu"
fi
ln -s ../usr/lib/x86_64-linux-gnu "$R/lib/x86_64-linux-gnu"
mkdir -p "$R/etc/libibverbs.d"
cp /etc/libibverbs.d/rxe.driver "$R/etc/libibverbs.d/"
echo "root:x:0:0:root:/root:/bin/sh" > "$R/etc/passwd"
echo "root:x:0:" > "$R/etc/group"
echo "127.0.0.1 localhost" > "$R/etc/hosts"
cp "$HERE/init" "$R/init"; chmod +x "$R/init"
cp "$HERE/checks.sh" "$R/etc/rxe-checks.sh"
(cd "$R" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$VM/initrd.gz"
log "initramfs $(du -h "$VM/initrd.gz" | cut -f1), kernel $KVER, prep $(( $(date +%s) - t_start ))s"

# ---- 5. boot ---------------------------------------------------------------------
LOG="$VM/guest-$MODE.log"
log "booting qemu -accel tcg (mode $MODE, log $LOG)"
t_boot=$(date +%s)
guest_limit=540; [[ "$MODE" == test ]] || guest_limit=1200   # the bench alone may take up to 900 s
set +e
timeout "${RXE_TIMEOUT:-$guest_limit}" qemu-system-x86_64 -accel tcg -m "${RXE_MEM:-2048}" -smp "${RXE_SMP:-2}" \
  -nographic -no-reboot -nic none \
  -kernel "$KERNEL" -initrd "$VM/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1 MODE=$MODE BENCH_SCALE=${RXE_BENCH_SCALE:-1}" >"$LOG" 2>&1
qrc=$?
set -e
# Show the guest's check/result lines (and the whole log on failure).
grep -aE '^(CHECK|RATIO|BENCH|DEVICES|RXE_|\[T\+)' "$LOG" | tr -d '\r' || true
res=$(grep -a '^RXE_RESULT:' "$LOG" | tail -1 | tr -d '\r')
log "qemu rc=$qrc, guest wall $(( $(date +%s) - t_boot ))s, total $(( $(date +%s) - t_start ))s"
if [[ -z "$res" ]]; then
  tail -40 "$LOG" >&2
  echo "RXE_RESULT: FAIL no result line from the guest (qemu rc=$qrc; timeout or crash)"
  exit 1
fi
echo "$res"
[[ "$res" == "RXE_RESULT: PASS"* ]] || { grep -a 'FAIL' "$LOG" | head -20 >&2; exit 1; }
