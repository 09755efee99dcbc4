#!/usr/bin/env bash
# Starts one host's share of a seqfeed training job under torchrun: checks that
# every storage node of the cluster file answers, then runs torchrun with the
# rendezvous taken from Slurm (when run by srun) or from the flags.
#
#   torchrun-launch.sh [--nproc N] [--nnodes N] [--node-rank R] [--master ADDR:PORT]
#                      [--wait-nodes SECONDS] --cluster cluster.toml -- TRAIN.py ARGS...
#
# Under Slurm (one task per host, see slurm-train.sbatch) --nnodes, --node-rank and
# --master default to SLURM_NNODES, SLURM_NODEID and the first host of
# SLURM_JOB_NODELIST (port 29500, or MASTER_PORT). Without Slurm they default
# to one host, 127.0.0.1 and a free port. --nproc defaults to the GPUs
# nvidia-smi lists, or SEQFEED_NPROC, or 1.
#
# The trainer gets SEQFEED_CLUSTER (the cluster file) in its environment; a
# secret for the nodes comes from SEQFEED_SECRET or SEQFEED_SECRET_FILE.
# Exit status: torchrun's, or 1 when a node does not answer within --wait-nodes.
set -euo pipefail

die() { echo "torchrun-launch: $*" >&2; exit 1; }

SEQFEED="${SEQFEED_BIN:-seqfeed}"
PYTHON="${PYTHON:-python3}"
nproc="${SEQFEED_NPROC:-}"
nnodes="${SLURM_NNODES:-1}"
node_rank="${SLURM_NODEID:-0}"
master=""
wait_nodes=60
cluster=""
while (($#)); do
  case "$1" in
    --nproc) nproc="$2"; shift 2 ;;
    --nnodes) nnodes="$2"; shift 2 ;;
    --node-rank) node_rank="$2"; shift 2 ;;
    --master) master="$2"; shift 2 ;;
    --wait-nodes) wait_nodes="$2"; shift 2 ;;
    --cluster) cluster="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown flag $1 (the trainer and its arguments go after --)" ;;
  esac
done
(($#)) || die "no trainer script: give it after --"
[[ -n "$cluster" ]] || die "--cluster is required"
[[ -f "$cluster" ]] || die "cluster file $cluster does not exist"
[[ "$nnodes" =~ ^[1-9][0-9]*$ ]] || die "--nnodes must be a positive integer, got '$nnodes'"
[[ "$node_rank" =~ ^[0-9]+$ ]] && ((node_rank < nnodes)) \
  || die "--node-rank must be in [0, $nnodes), got '$node_rank'"

if [[ -z "$nproc" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    nproc="$(nvidia-smi --list-gpus | wc -l)"
  fi
  [[ "$nproc" =~ ^[1-9][0-9]*$ ]] || nproc=1
fi

if [[ -z "$master" ]]; then
  port="${MASTER_PORT:-29500}"
  if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
    if command -v scontrol >/dev/null 2>&1; then
      host="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
    else
      # Without scontrol only a plain list (no ranges) can be read.
      host="${SLURM_JOB_NODELIST%%,*}"
      [[ "$host" != *"["* ]] || die "cannot expand SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST without scontrol; pass --master"
    fi
  else
    host=127.0.0.1
    ((nnodes == 1)) || die "--master is required for $nnodes hosts outside Slurm"
    port="${MASTER_PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
  fi
  master="$host:$port"
fi

secret_args=()
if [[ -n "${SEQFEED_SECRET_FILE:-}" ]]; then
  secret_args=(--secret-file "$SEQFEED_SECRET_FILE")
fi
echo "torchrun-launch: host $node_rank of $nnodes, $nproc processes, rendezvous $master; checking the nodes of $cluster" >&2
"$SEQFEED" --log warn health --cluster "$cluster" --wait-ms "$((wait_nodes * 1000))" "${secret_args[@]}" >&2 \
  || die "storage nodes of $cluster are not all answering (waited ${wait_nodes} s)"

export SEQFEED_CLUSTER="$cluster"
exec "$PYTHON" -m torch.distributed.run \
  --nnodes "$nnodes" --node-rank "$node_rank" --nproc-per-node "$nproc" \
  --rdzv-backend c10d --rdzv-endpoint "$master" --rdzv-id "${SLURM_JOB_ID:-seqfeed}" \
  "$@"
