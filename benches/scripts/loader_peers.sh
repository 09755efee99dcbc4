#!/usr/bin/env bash
# Runs benches/scripts/loader_peers.py (seqfeed.Loader against megatron-core's
# GPTDataset, MosaicML streaming and litdata, plus the Python-vs-Rust overhead
# ratio) with the Python venv that has torch, megatron-core, mosaicml-streaming,
# litdata and the seqfeed package: VENV, else SEQFEED_VENV, else the repo's
# .venv (`SEQFEED_BENCH_PEERS=1 scripts/python-env.sh`, which adds the peers,
# then `pip install ./crates/python`).
# Arguments go to the script (--scale N for a larger run; --help).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${VENV:-${SEQFEED_VENV:-$root/.venv}}"
[[ -n "$venv" && -x "$venv/bin/python" ]] || { echo "loader_peers.sh: no venv (set VENV=...)" >&2; exit 3; }
"$venv/bin/python" -c "import streaming, litdata" 2>/dev/null || {
  echo "loader_peers.sh: the venv lacks mosaicml-streaming or litdata: run SEQFEED_BENCH_PEERS=1 scripts/python-env.sh" >&2; exit 3; }
export PATH="$venv/bin:$root/target/release:$PATH"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
exec "$venv/bin/python" "$here/loader_peers.py" "$@"
