#!/usr/bin/env bash
# Runs benches/scripts/python_loader.py with the Python venv that has torch,
# megatron-core and the seqfeed package (VENV, default /root/venv-torch, else
# the repo's .venv from scripts/python-env.sh). Arguments go to the script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${VENV:-}"
if [[ -z "$venv" ]]; then
  for cand in /root/venv-torch "$root/.venv"; do
    if [[ -x "$cand/bin/python" ]]; then venv="$cand"; break; fi
  done
fi
[[ -n "$venv" && -x "$venv/bin/python" ]] || { echo "python_loader.sh: no venv (set VENV=...)" >&2; exit 3; }
export PATH="$venv/bin:$root/target/release:$PATH"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
exec "$venv/bin/python" "$here/python_loader.py" "$@"
