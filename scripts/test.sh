#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls it).
#   1. installs the Debian packages it needs (scripts/setup.sh --vm)
#   2. cargo fmt --check and clippy -D warnings
#   3. the Python environment (scripts/python-env.sh: a venv with torch, pytest, maturin, tiktoken...)
#   4. every workspace test (real files, real sockets on 127.0.0.1, network namespaces where permitted)
#   5. the Python package: builds its wheel once (maturin --zig, manylinux2014), checks its tag,
#      installs it in a fresh venv without Rust on PATH and imports it, then installs that
#      same wheel in the torch venv and runs the pytest suite (incl. a torchrun training run)
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
echo "== Python package: the wheel, built once (maturin build --release --zig, manylinux2014)"
# zig links against glibc 2.17 symbols, so the wheel installs on any Linux with glibc >= 2.17
# (manylinux2014) although this host has a newer one. rdma-core and CUDA are dlopen'ed at
# run time: the extension links neither (test_wheel.py checks it with readelf).
WHEEL_DIR="${CARGO_TARGET_DIR:-$PWD/target}/wheels"
WHEEL_TAG=manylinux_2_17_x86_64
rm -f "$WHEEL_DIR"/seqfeed-*.whl
t0=$(date +%s)
# No debug info for this build: the wheel's extension is stripped anyway (strip = true in
# pyproject.toml), and generating it made the build slower and target/ bigger.
(cd crates/python && CARGO_PROFILE_RELEASE_DEBUG=false \
  maturin build --release --locked --zig --compatibility manylinux2014 -o "$WHEEL_DIR")
echo "wheel: built in $(($(date +%s) - t0))s"
wheels=("$WHEEL_DIR"/seqfeed-*.whl)
[[ ${#wheels[@]} == 1 && -f ${wheels[0]} ]] || { echo "ERROR: expected one wheel in $WHEEL_DIR, found: ${wheels[*]}" >&2; exit 1; }
export SEQFEED_WHEEL="${wheels[0]}"
echo "wheel: $SEQFEED_WHEEL ($(du -h "$SEQFEED_WHEEL" | cut -f1))"
audit=$(auditwheel show "$SEQFEED_WHEEL")
echo "$audit"
# auditwheel wraps its sentences; join the lines before matching.
if ! tr -s ' \n' '  ' <<<"$audit" | grep -q "consistent with the following platform tag: \"$WHEEL_TAG\""; then
  echo "ERROR: auditwheel does not find $(basename "$SEQFEED_WHEEL") consistent with $WHEEL_TAG (output above)" >&2
  exit 1
fi
echo "== the wheel in a fresh venv with no cargo or rustc on PATH (--no-deps: no torch)"
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
bare=(env -i PATH=/usr/bin:/bin HOME="$HOME")
if "${bare[@]}" sh -c 'command -v cargo || command -v rustc'; then
  echo "ERROR: cargo or rustc is on PATH=/usr/bin:/bin: the fresh-venv check would not show the wheel needs no Rust" >&2
  exit 1
fi
"${bare[@]}" "$(python -c 'import sys; print(sys._base_executable)')" -m venv "$fresh/venv"
"${bare[@]}" "$fresh/venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$SEQFEED_WHEEL"
(cd "$fresh" && "${bare[@]}" "$fresh/venv/bin/python" -c 'import sys, seqfeed; assert "torch" not in sys.modules; print("fresh venv: seqfeed", seqfeed.__version__, "from", seqfeed.__file__)')
echo "== the same wheel in the torch venv; its stubs against the module (mypy); pytest"
python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$SEQFEED_WHEEL"
# The stub is checked where it is written (the wheel ships that file): mypy given a
# file inside site-packages takes site-packages for a source root and stops on the
# modules it finds there. stubtest then compares it with the installed module.
usage="$PWD/crates/python/tests/typecheck_usage.py"
stub="$PWD/crates/python/python/seqfeed/_native.pyi"
(cd "$fresh" && python -m mypy --strict --no-incremental --follow-imports=silent "$stub" \
  && python -m mypy.stubtest seqfeed._native && python -m mypy --no-incremental "$usage")
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
