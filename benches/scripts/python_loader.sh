#!/usr/bin/env bash
# Runs benches/scripts/python_loader.py with the Python venv that has torch,
# megatron-core and the seqfeed package: VENV, else SEQFEED_VENV, else the
# repo's .venv (scripts/python-env.sh, then `pip install ./crates/python`).
# Arguments go to the script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${VENV:-${SEQFEED_VENV:-$root/.venv}}"
[[ -n "$venv" && -x "$venv/bin/python" ]] || { echo "python_loader.sh: no venv (set VENV=...)" >&2; exit 3; }
export PATH="$venv/bin:$root/target/release:$PATH"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
exec "$venv/bin/python" "$here/python_loader.py" "$@"
