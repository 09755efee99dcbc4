#!/usr/bin/env bash
# Installs the Debian packages seqfeed's build, tests and benchmarks use.
# Safe to re-run; does nothing for packages already present.
# Usage: scripts/setup.sh            (build + tests)
#        scripts/setup.sh --vm       (also the soft-RoCE VM harness's host tools)
set -euo pipefail

# cmake + libclang-dev: sideway's rdma-mummy-sys builds a dlopen shim of rdma-core and runs bindgen.
# systemd: systemd-analyze verifies scripts/deploy/seqfeed-node.service in the tests.
pkgs=(build-essential pkg-config cmake libclang-dev iproute2 iperf3 python3 python3-numpy systemd procps util-linux)
if [[ "${1:-}" == "--vm" ]]; then
  pkgs+=(qemu-system-x86 busybox-static rdma-core ibverbs-providers libibverbs1 librdmacm1
         perftest cpio xz-utils zstd kmod)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi
