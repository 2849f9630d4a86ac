#!/usr/bin/env bash
# Run an entry script on this machine with N processes.
#
#   scripts/run_local.sh <nets/..._run.py> [-n=N] [--flag=value ...]
#
# N=1 (default): plain python. N>1: horovodrun -np N -H localhost:N (gloo) when Horovod is
# installed and --mgw_backend is not "torch"; otherwise torchrun --standalone. Both get
# --enbl_multi_gpu. Set MASTER_PORT to choose the rendezvous port (default: a free one).
# `sh scripts/run_local.sh ...` (how PocketFlow's docs call it) re-runs this under bash.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; }

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then usage; exit 2; fi
script=$1; shift
if [ ! -f "$script" ]; then echo "error: entry script '$script' not found" >&2; usage; exit 2; fi

nb_procs=1
backend=auto
args=()
for arg in "$@"; do
  case "$arg" in
    -n=*|--n=*) nb_procs=${arg#*=} ;;
    --mgw_backend=*) backend=${arg#*=}; args+=("$arg") ;;
    *) args+=("$arg") ;;
  esac
done
if ! [[ "$nb_procs" =~ ^[0-9]+$ ]] || [ "$nb_procs" -lt 1 ]; then
  echo "error: -n must be a positive integer (number of processes), got '$nb_procs'" >&2; exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
python_bin=${PYTHON:-$(command -v python || command -v python3)}

if [ "$nb_procs" -eq 1 ]; then
  exec "$python_bin" "$script" "${args[@]}"
fi

has_horovod() { "$python_bin" -c "import horovod.torch" >/dev/null 2>&1; }

if [ "$backend" = "horovod" ] && ! has_horovod; then
  echo "error: --mgw_backend=horovod but Horovod is not installed; run scripts/install_horovod.sh or use --mgw_backend=torch" >&2
  exit 2
fi

port=${MASTER_PORT:-}
if [ -n "$port" ]; then
  if "$python_bin" - "$port" <<'PY'
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
PY
  then
    echo "error: port $port (MASTER_PORT) is already in use; pick another or unset MASTER_PORT" >&2; exit 2
  fi
fi

# One intra-op thread per process unless told otherwise (torchrun does the same); with
# Horovod, oversubscribed OpenMP threads made training ~20x slower on a 2-core machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [ "$backend" != "torch" ] && has_horovod; then
  exec horovodrun -np "$nb_procs" -H "localhost:$nb_procs" --gloo \
    "$python_bin" "$script" --enbl_multi_gpu "${args[@]}"
fi

rdzv=(--standalone)
[ -n "$port" ] && rdzv=(--rdzv_backend=c10d --rdzv_endpoint="localhost:$port" --nnodes=1)
exec "$python_bin" -m learners.torchrun "${rdzv[@]}" --nproc_per_node="$nb_procs" \
  "$script" --enbl_multi_gpu "${args[@]}"
