#!/usr/bin/env bash
# Multi-node training with Horovod (gloo; no network interface is hard-coded).
#
#   scripts/run_horovod.sh -H host1:4,host2:4 <nets/..._run.py> [--flag=value ...]
#
# Every host needs the same checkout and environment at the same path, and passwordless ssh
# from this one. The total number of processes is the sum of the slots in the host list.
# Set HOROVOD_GLOO_IFACE (or pass --network-interface through HVD_ARGS) only if the hosts
# have several networks and Horovod picks the wrong one.
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; }

if [ $# -lt 3 ] || [ "$1" != "-H" ]; then usage; exit 2; fi
hosts=$2; shift 2
script=$1; shift
if [ ! -f "$script" ]; then echo "error: entry script '$script' not found" >&2; exit 2; fi
if ! [[ "$hosts" =~ ^[A-Za-z0-9._-]+:[0-9]+(,[A-Za-z0-9._-]+:[0-9]+)*$ ]]; then
  echo "error: -H must look like host1:4,host2:4, got '$hosts'" >&2; exit 2
fi
nb_procs=0
IFS=',' read -ra entries <<< "$hosts"
for entry in "${entries[@]}"; do nb_procs=$((nb_procs + ${entry##*:})); done

python_bin=${PYTHON:-$(command -v python || command -v python3)}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# shellcheck disable=SC2086
exec horovodrun -np "$nb_procs" -H "$hosts" --gloo ${HVD_ARGS:-} \
  "$python_bin" "$script" --enbl_multi_gpu --mgw_backend=horovod "$@"
