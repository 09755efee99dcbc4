#!/usr/bin/env bash
# Real soft-RoCE (kernel rdma_rxe) tests and benchmarks in a qemu guest, for hosts
# whose kernel has no RDMA (or no rxe). One command on a fresh Debian 12 machine
# with Rust installed:
#
#   scripts/rxe/run.sh test     # verbs self-tests + node/ranks over rxe (what .ci/run runs)
#   scripts/rxe/run.sh bench    # verbs vs ib_read_bw vs tcp, printed as ratios
#   scripts/rxe/run.sh all      # both in one boot
#   scripts/rxe/run.sh odp      # on-demand paging on trixie-backports' kernel (not in CI;
#                               # see scripts/rxe/README.md)
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
#      RXE_SKIP_BUILD=1 (reuse binaries already in target/release), RXE_KERNEL=debian|backports,
#      RXE_BACKPORTS (suite, trixie-backports), RXE_MIRROR, RXE_ODP_REPEAT (odp mode).
set -euo pipefail

MODE=${1:-test}
case "$MODE" in
  test|bench|all|odp|host-test|host-bench|host-all|host-odp) ;;
  *) echo "usage: $0 test|bench|all|odp|host-test|host-bench|host-all|host-odp" >&2; exit 2 ;;
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
need=(qemu-system-x86 busybox-static rdma-core ibverbs-providers libibverbs1 ibverbs-utils perftest
      iproute2 cpio kmod xz-utils zstd curl gpgv debian-archive-keyring cmake libclang-dev gcc)
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
  log "building release binaries (${GUEST_BINS[*]}, rxe integration test, node verbs test$([[ "$MODE" == *bench || "$MODE" == *all ]] && echo ", benchmark"))"
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
  if [[ "$MODE" == *bench || "$MODE" == *all ]]; then
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
# RXE_KERNEL=debian (default): the host apt's linux-image-amd64 (Debian 12: 6.1, no rxe ODP).
# RXE_KERNEL=backports: the newest linux-image-amd64 of $RXE_BACKPORTS (trixie-backports),
# whose rxe offers on-demand paging; fetched from deb.debian.org and verified: InRelease's
# signature against the host's debian-archive-keyring (gpgv), Packages.xz against InRelease's
# SHA256, every .deb against Packages' SHA256. Mode `odp` defaults to backports.
KSEL=${RXE_KERNEL:-debian}; [[ "$MODE" == odp && -z "${RXE_KERNEL:-}" ]] && KSEL=backports
case "$KSEL" in
  debian)
    KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    if [[ -z "$KPKG" ]]; then
      sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
      $sudo apt-get update -qq
      KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    fi
    [[ -n "$KPKG" ]] || { log "cannot resolve the kernel package behind linux-image-amd64"; exit 2; } ;;
  backports)
    MIRROR=${RXE_MIRROR:-http://deb.debian.org/debian}; SUITE=${RXE_BACKPORTS:-trixie-backports}
    IDX="$VM/index-$SUITE"; mkdir -p "$IDX"
    curl -fsSL --retry 3 -o "$IDX/InRelease" "$MIRROR/dists/$SUITE/InRelease" ||
      { log "cannot fetch $MIRROR/dists/$SUITE/InRelease"; exit 2; }
    gpgv --keyring /usr/share/keyrings/debian-archive-keyring.gpg "$IDX/InRelease" 2>"$IDX/gpgv.log" ||
      { cat "$IDX/gpgv.log" >&2; log "$SUITE InRelease: bad or unknown signature"; exit 2; }
    want=$(awk '/^SHA256:/{s=1; next} /^[^ ]/{s=0} s && $3=="main/binary-amd64/Packages.xz"{print $1}' "$IDX/InRelease")
    curl -fsSL --retry 3 -o "$IDX/Packages.xz" "$MIRROR/dists/$SUITE/main/binary-amd64/Packages.xz" ||
      { log "cannot fetch $SUITE Packages.xz"; exit 2; }
    [[ -n "$want" && "$(sha256sum < "$IDX/Packages.xz" | cut -d' ' -f1)" == "$want" ]] ||
      { log "$SUITE Packages.xz does not match InRelease's SHA256"; exit 2; }
    xz -dc "$IDX/Packages.xz" > "$IDX/Packages"
    # field PKG FIELD: one single-line field of one package's stanza (exact name match).
    field() { awk -v RS= -v p="$1" -v f="$2" '{
                n = split($0, L, "\n"); pk = 0; v = ""
                for (i = 1; i <= n; i++) { if (L[i] == "Package: " p) pk = 1; if (index(L[i], f ": ") == 1) v = substr(L[i], length(f) + 3) }
                if (pk) out = v
              } END { print out }' "$IDX/Packages"; }
    KPKG=$(field linux-image-amd64 Depends | tr ',' '\n' | grep -oE 'linux-image-[0-9][^ ]*' | head -1)
    [[ -n "$KPKG" ]] || { log "no linux-image-amd64 in $SUITE"; exit 2; } ;;
  *) log "RXE_KERNEL=$KSEL: want debian or backports"; exit 2 ;;
esac
KVER=${KPKG#linux-image-}
KDIR="$VM/kernel-$KVER"
# Where the package put modules and kernel: /lib/modules/KVER and /boot (Debian 12), or
# /usr/lib/modules/KVER with vmlinuz inside it (trixie's merged /usr).
kmods() {
  KSRC="$KDIR/pkg/lib/modules/$KVER"; [[ -d "$KSRC" ]] || KSRC="$KDIR/pkg/usr/lib/modules/$KVER"
  VMLINUZ="$KDIR/pkg/boot/vmlinuz-$KVER"; [[ -f "$VMLINUZ" ]] || VMLINUZ="$KSRC/vmlinuz"
}
if [[ ! -f "$KDIR/.done" ]]; then
  log "fetching $KPKG ($KSEL)"
  rm -rf "$KDIR"; mkdir -p "$KDIR"
  if [[ "$KSEL" == debian ]]; then
    (cd "$VM/debs" && ls "${KPKG}"_*.deb >/dev/null 2>&1 || apt-get download -q "$KPKG" >/dev/null 2>&1)
    dpkg -x "$(ls "$VM/debs/${KPKG}"_*.deb | head -1)" "$KDIR/pkg"
  else
    # Since 6.19 the image package is a stub depending on linux-binary-KVER (vmlinuz) and
    # linux-modules-KVER; older ones hold both. Unpack the image and those of its dependencies.
    pkgs="$KPKG $(field "$KPKG" Depends | tr ',' '\n' | grep -oE "linux-(binary|modules)-${KVER//+/\\+}" | sort -u)"
    for p in $pkgs; do
      fn=$(field "$p" Filename); sum=$(field "$p" SHA256)
      [[ -n "$fn" && -n "$sum" ]] || { log "$p: not in $SUITE's Packages"; exit 2; }
      deb="$VM/debs/$(basename "$fn")"
      if [[ ! -f "$deb" || "$(sha256sum < "$deb" | cut -d' ' -f1)" != "$sum" ]]; then
        curl -fsSL --retry 3 -o "$deb.part" "$MIRROR/$fn" || { log "cannot fetch $MIRROR/$fn"; exit 2; }
        [[ "$(sha256sum < "$deb.part" | cut -d' ' -f1)" == "$sum" ]] ||
          { rm -f "$deb.part"; log "$fn does not match Packages' SHA256"; exit 2; }
        mv "$deb.part" "$deb"
      fi
      log "  $(basename "$fn"): SHA256 $sum verified (InRelease signed by $(grep -o 'Good signature from "[^"]*"' "$IDX/gpgv.log"))"
      dpkg -x "$deb" "$KDIR/pkg"; rm -f "$deb"   # unpacked once (.done): keep .vm small
    done
  fi
  kmods
  ls "$KSRC/kernel/drivers/infiniband/sw/rxe/"rdma_rxe.ko* >/dev/null 2>&1 ||
    { log "$KPKG has no rdma_rxe module"; exit 2; }
  /sbin/depmod -b "${KSRC%/lib/modules/$KVER}" "$KVER" 2>/dev/null   # warns of no modules.builtin
  # Uncompressed vmlinux boots through PVH ~5 s faster; fall back to vmlinuz without python3.
  if command -v python3 >/dev/null; then
    python3 - "$VMLINUZ" "$KDIR/vmlinux" <<'PY' || rm -f "$KDIR/vmlinux"
import lzma, sys
d = open(sys.argv[1], 'rb').read()
i = d.find(b'\xfd7zXZ\x00')
if i < 0:
    sys.exit(1)  # not xz (e.g. zstd): boot the vmlinuz itself
open(sys.argv[2], 'wb').write(lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:]))
PY
  fi
  touch "$KDIR/.done"
fi
kmods
KERNEL="$KDIR/vmlinux"; [[ -s "$KERNEL" ]] || KERNEL="$VMLINUZ"

# ---- 4. initramfs ----------------------------------------------------------------
R="$VM/root"
rm -rf "$R"
mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,tmp,run,usr/bin,usr/sbin,lib64,data}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do
  [[ "$a" == busybox ]] || ln -sf /bin/busybox "$R/bin/$a"
done
ln -sf /bin/busybox "$R/sbin/modprobe"

# Modules and their dependencies (modules.dep), written in load order to /etc/rxe-modules
# for /init. Compressed modules (.ko.xz/.ko.zst, Debian since 6.x backports) are unpacked:
# busybox insmod loads plain ELF only. crc32_generic is what 6.1's rxe gets its CRC from
# (a crypto soft dependency, not in modules.dep); newer rxe calls the crc32 library instead,
# so it is optional.
# rdma_ucm (librdmacm, the opt-in rdma_cm set-up) brings rdma_cm, ib_cm, iw_cm and configfs.
MODS="crc32_generic? ip6_udp_tunnel udp_tunnel ib_core ib_uverbs rdma_rxe dummy rdma_ucm"
order=()
add_mod() {   # add_mod PATH: its dependencies first (modules.dep lists them nearest first), then it
  local f=$1 line d i deps=()
  for d in "${order[@]}"; do [[ "$d" == "$f" ]] && return 0; done
  line=$(awk -F: -v f="$f" '$1 == f {print; exit}' "$KSRC/modules.dep")
  read -r -a deps <<<"${line#*:}"
  for ((i = ${#deps[@]} - 1; i >= 0; i--)); do add_mod "${deps[$i]}"; done
  order+=("$f")
}
for m in $MODS; do
  opt=0; [[ "$m" == *\? ]] && { opt=1; m=${m%\?}; }
  line=$(grep -E "/(${m}|${m//_/-})\.ko(\.xz|\.zst|\.gz)?:" "$KSRC/modules.dep" | head -1 || true)
  if [[ -z "$line" ]]; then
    ((opt)) && { log "module $m not in $KPKG (optional, skipped)"; continue; }
    log "module $m not found in $KPKG"; exit 2
  fi
  add_mod "${line%%:*}"
done
: > "$R/etc/rxe-modules"
for f in "${order[@]}"; do
  plain=${f%.xz}; plain=${plain%.zst}; plain=${plain%.gz}
  mkdir -p "$R/lib/modules/$KVER/$(dirname "$f")"
  case "$f" in
    *.xz) xz -dc "$KSRC/$f" > "$R/lib/modules/$KVER/$plain" ;;
    *.zst) zstd -qdc "$KSRC/$f" > "$R/lib/modules/$KVER/$plain" ;;
    *.gz) gzip -dc "$KSRC/$f" > "$R/lib/modules/$KVER/$plain" ;;
    *) cp "$KSRC/$f" "$R/lib/modules/$KVER/$plain" ;;
  esac
  echo "$plain" >> "$R/etc/rxe-modules"
done
log "modules: $(tr '\n' ' ' < "$R/etc/rxe-modules" | sed 's|[^ ]*/||g')"

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
for b in /usr/bin/ib_read_bw /usr/bin/rdma /usr/bin/ibv_devinfo \
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
# `seqfeed`: the unprivileged user (no CAP_IPC_LOCK) the memlock / ODP checks run a node as.
printf 'root:x:0:0:root:/root:/bin/sh\nseqfeed:x:1000:1000:seqfeed:/tmp:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\nseqfeed:x:1000:\n' > "$R/etc/group"
echo "127.0.0.1 localhost" > "$R/etc/hosts"
cp "$HERE/init" "$R/init"; chmod +x "$R/init"
cp "$HERE/checks.sh" "$R/etc/rxe-checks.sh"
(cd "$R" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$VM/initrd.gz"
log "initramfs $(du -h "$VM/initrd.gz" | cut -f1), kernel $KVER, prep $(( $(date +%s) - t_start ))s"

# ---- 5. boot ---------------------------------------------------------------------
LOG="$VM/guest-$MODE.log"
log "booting qemu -accel tcg (mode $MODE, log $LOG)"
t_boot=$(date +%s)
guest_limit=540; [[ "$MODE" == test || "$MODE" == odp ]] || guest_limit=1200   # the bench alone may take up to 900 s
set +e
timeout "${RXE_TIMEOUT:-$guest_limit}" qemu-system-x86_64 -accel tcg -m "${RXE_MEM:-2048}" -smp "${RXE_SMP:-2}" \
  -nographic -no-reboot -nic none \
  -kernel "$KERNEL" -initrd "$VM/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1 MODE=$MODE BENCH_SCALE=${RXE_BENCH_SCALE:-1} ODP_REPEAT=${RXE_ODP_REPEAT:-1}" >"$LOG" 2>&1
qrc=$?
set -e
# Show the guest's check/result lines (and the whole log on failure).
grep -aE '^(CHECK|RATIO|BENCH|DEVICES|ODPCAPS|RXE_|\[T\+)' "$LOG" | tr -d '\r' || true
res=$(grep -a '^RXE_RESULT:' "$LOG" | tail -1 | tr -d '\r')
log "qemu rc=$qrc, guest wall $(( $(date +%s) - t_boot ))s, total $(( $(date +%s) - t_start ))s"
if [[ -z "$res" ]]; then
  tail -40 "$LOG" >&2
  echo "RXE_RESULT: FAIL no result line from the guest (qemu rc=$qrc; timeout or crash)"
  exit 1
fi
echo "$res"
[[ "$res" == "RXE_RESULT: PASS"* ]] || { grep -a 'FAIL' "$LOG" | head -20 >&2; exit 1; }
