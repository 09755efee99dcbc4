#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls it).
#   1. installs the Debian packages it needs (scripts/setup.sh --vm)
#   2. cargo fmt --check and clippy -D warnings
#   3. the Python environment (scripts/python-env.sh: a venv with torch, pytest, maturin, tiktoken...)
#   4. every workspace test (real files, real sockets on 127.0.0.1, network namespaces where permitted)
#   5. the Python package: `pip install ./crates/python`, then its pytest suite (incl. a torchrun training run)
#   6. the soft-RoCE part: boots a qemu guest with kernel rdma_rxe and runs the verbs tests there
# Set SEQFEED_SKIP_VM=1 to skip step 4 (e.g. on a laptop without qemu); CI never sets it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --vm
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "== installing rustfmt and clippy (rustup components)"
  rustup component add rustfmt clippy
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== Python environment (scripts/python-env.sh)"
export SEQFEED_VENV="${SEQFEED_VENV:-$PWD/.venv}"
scripts/python-env.sh
# The venv's python3 first: tests that compare with Python tools (tiktoken) use it.
export PATH="$SEQFEED_VENV/bin:$PATH"
echo "== cargo test"
cargo test --workspace --locked
echo "== Python package: pip install ./crates/python, then pytest"
python -m pip install -q --disable-pip-version-check ./crates/python
cargo build -q --locked -p seqfeed
SEQFEED_BIN="$PWD/target/debug/seqfeed" python -m pytest -q crates/python/tests
echo "== device tests skipped on this host (cargo hides the output of passing tests; shown here)"
{
  cargo test -q --locked -p seqfeed-cuda --test gpu -- --nocapture
  cargo test -q --locked -p seqfeed-tests --test rxe -- --nocapture
  cargo test -q --locked -p seqfeed-verbs --test device -- --nocapture
} 2>&1 | grep -E "^SKIP" || echo "(none: this host has CUDA and RDMA)"
if [[ "${SEQFEED_SKIP_VM:-0}" != "1" && -x scripts/rxe/run.sh ]]; then
  echo "== soft-RoCE (rxe) tests in a qemu guest"
  scripts/rxe/run.sh test
fi
echo "== all tests passed"
