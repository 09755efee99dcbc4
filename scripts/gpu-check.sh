#!/usr/bin/env bash
# GPU check for seqfeed's CUDA destinations (crates/cuda).
#
# What it does on a machine with an NVIDIA GPU and driver:
#   1. runs the seqfeed-cuda tests (unit, gpu, loader, disabled) with
#      SEQFEED_REQUIRE_CUDA=1, so a test that would skip fails instead;
#   2. runs the gpu_check example: bytes on the device vs the files (copy
#      back and compare) for the loader over local and tcp through pinned
#      bounce buffers, and GB/s into device memory per path as a ratio to a
#      plain cuMemcpyHtoD of the same bytes measured in the same run; plus
#      the path decision, a dmabuf export and the NVRTC widening kernel;
#      and slot reuse (crates/cuda/tests/common/release_checks.rs, also run
#      by the gpu test binary): micro-batches held across twice the ring
#      stay byte-exact while the loader moves on, and a released slot's
#      next copy / direct fill waits for the consumer stream's work.
#
# Modes:
#   scripts/gpu-check.sh build [DIR]   build release binaries here (needs cargo),
#                                      strip them into DIR (default .gpu-check,
#                                      added to .git/info/exclude)
#   scripts/gpu-check.sh run [DIR]     run prebuilt binaries from DIR (no cargo needed)
#   scripts/gpu-check.sh               build into .gpu-check, then run
#
# The device machine has no Rust toolchain and no network, so build here and
# carry the binaries (about 10-20 MiB stripped):
#   scripts/gpu-check.sh build
#   device run: command "bash scripts/gpu-check.sh run .gpu-check",
#               carry [".gpu-check"], timeout_s 420
# The whole run takes about one to three minutes on an H200 machine.
#
# Scale (environment): SEQFEED_GPU_CHECK_STEPS (default 64 steps of 32 MiB),
# SEQFEED_GPU_CHECK_FILE_MB (default 128, 8 files). LOCAL_RANK picks the GPU.
set -uo pipefail

mode="${1:-all}"
dir="${2:-.gpu-check}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root" || exit 1

log() { printf '== %s\n' "$*"; }

build() {
    command -v cargo >/dev/null || { echo "cargo not found: build on a machine with Rust, then carry $dir"; return 1; }
    local target="${CARGO_TARGET_DIR:-$root/target}"
    mkdir -p "$dir"
    if [ -d .git ] && ! grep -qx "/$dir/" .git/info/exclude 2>/dev/null; then
        echo "/$dir/" >>.git/info/exclude
    fi
    log "building seqfeed-cuda tests and gpu_check (release)"
    local json
    json="$(cargo test --release -p seqfeed-cuda --no-run --message-format=json 2>/dev/null)" || {
        cargo test --release -p seqfeed-cuda --no-run; return 1; }
    cargo build --release -p seqfeed-cuda --example gpu_check || return 1
    rm -f "$dir"/*
    # Test executables of seqfeed-cuda, named after their target.
    printf '%s\n' "$json" | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if "seqfeed-cuda" not in m["package_id"] and "seqfeed_cuda" not in m["package_id"]:
        continue
    t = m["target"]
    if "example" in t["kind"]:
        continue
    name = "test-" + ("unit" if t["kind"] == ["lib"] else t["name"])
    shutil.copy(m["executable"], sys.argv[1] + "/" + name)
    print("  " + name)
' "$dir" || return 1
    cp "$target/release/examples/gpu_check" "$dir/gpu_check" || return 1
    for f in "$dir"/*; do strip --strip-debug "$f" 2>/dev/null || true; done
    du -sh "$dir"
}

find_lib() { # name -> directory holding it (first match), or nothing
    local name="$1" d
    d="$(ldconfig -p 2>/dev/null | awk -v n="$name" '$1 ~ "^"n {print $NF; exit}')"
    if [ -n "$d" ]; then dirname "$d"; return; fi
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/lib64 \
             /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64 \
             /usr/lib/x86_64-linux-gnu /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib \
             /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu*/lib \
             /usr/local/lib/python3*/dist-packages/nvidia/*/lib; do
        if compgen -G "$d/$name*" >/dev/null; then echo "$d"; return; fi
    done
}

run() {
    [ -x "$dir/gpu_check" ] || { echo "no binaries in $dir: run 'scripts/gpu-check.sh build' first"; return 1; }
    local out="${OUT:-}"
    log "machine"
    uname -srm
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    lsmod 2>/dev/null | grep -E '^(nvidia_peermem|nv_peer_mem)' || echo "peer-memory module: not loaded"
    ls /sys/class/infiniband 2>/dev/null | sed 's/^/rdma device: /' || true

    # libcuda: the binaries dlopen libcuda.so / libcuda.so.1.
    local cudadir; cudadir="$(find_lib libcuda.so)"
    [ -n "$cudadir" ] && export LD_LIBRARY_PATH="$cudadir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "libcuda: ${cudadir:-not found}"
    # NVRTC: cudarc looks for libnvrtc.so (or .so.12 ...); CUDA 13 ships
    # libnvrtc.so.13, so link it under the plain name in a private dir.
    local nvdir; nvdir="$(find_lib libnvrtc.so)"
    if [ -n "$nvdir" ]; then
        local real; real="$(ls "$nvdir"/libnvrtc.so* 2>/dev/null | grep -v builtins | head -1)"
        mkdir -p /tmp/seqfeed-nvrtc && ln -sf "$real" /tmp/seqfeed-nvrtc/libnvrtc.so
        export LD_LIBRARY_PATH="/tmp/seqfeed-nvrtc:$nvdir:$LD_LIBRARY_PATH"
        export SEQFEED_REQUIRE_NVRTC=1
        echo "nvrtc: $real"
    else
        echo "nvrtc: not found (the widening test will skip)"
    fi

    export SEQFEED_REQUIRE_CUDA=1
    local fails=0 t
    for t in "$dir"/test-*; do
        log "$(basename "$t")"
        if ! timeout 180 "$t" --nocapture --test-threads=4; then
            echo "FAILED: $(basename "$t")"; fails=$((fails + 1))
        fi
    done
    log "gpu_check"
    local rc
    if [ -n "$out" ]; then
        RUST_LOG="${RUST_LOG:-warn}" timeout 300 "$dir/gpu_check" --require | tee "$out/gpu_check.txt"
        rc=${PIPESTATUS[0]}
    else
        RUST_LOG="${RUST_LOG:-warn}" timeout 300 "$dir/gpu_check" --require
        rc=$?
    fi
    [ "$rc" -ne 0 ] && { echo "FAILED: gpu_check (exit $rc)"; fails=$((fails + 1)); }
    log "summary: $fails failure(s)"
    [ "$fails" -eq 0 ]
}

case "$mode" in
    build) build ;;
    run) run ;;
    all) build && run ;;
    *) echo "usage: $0 [build|run] [DIR]"; exit 2 ;;
esac
