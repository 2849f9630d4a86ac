#!/usr/bin/env bash
# Reproduce one of PocketFlow's published results (rows of scripts/reproduce.tsv).
#
#   scripts/reproduce.sh ROW [--dry-run] [extra flags...]
#   scripts/reproduce.sh --list
#
# Runs the row's full-precision model first (its `needs` row; skipped when that model is
# complete: <models>/<needs>/eval/model.ckpt exists without an INCOMPLETE mark), then the row,
# both through scripts/run_local.sh. Extra flags go to both steps, after the row's own (so
# they override them): -n=8, --data_dir_local=..., --nb_epochs_rat=... Every row writes under
# <models>/<row>/ (train/, eval/, ws/, logs/); <models> is $REPRO_MODELS_DIR, default ./models.
# --dry-run prints the commands, one per line, and runs nothing. docs/reproduce.md lists rows.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
table="$root/scripts/reproduce.tsv"
models=${REPRO_MODELS_DIR:-./models}
models=${models%/}

declare -A ENTRY FLAGS NEEDS PUBLISHED
ORDER=()
while IFS=$'\t' read -r row_id entry flags needs published _source || [ -n "${row_id:-}" ]; do
  case "$row_id" in ''|'#'*|row_id) continue ;; esac
  ENTRY[$row_id]=$entry; FLAGS[$row_id]=$flags; NEEDS[$row_id]=$needs
  PUBLISHED[$row_id]=$published; ORDER+=("$row_id")
done < "$table"

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then usage; exit 2; fi
if [ "$1" = "--list" ]; then
  for row in "${ORDER[@]}"; do printf '%-36s %s\n' "$row" "${PUBLISHED[$row]}"; done
  exit 0
fi

dry_run=0
row=""
extra=()
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then dry_run=1
  elif [ -z "$row" ] && [ "${arg#-}" = "$arg" ]; then row=$arg
  else extra+=("$arg")
  fi
done
if [ -z "$row" ] || [ -z "${ENTRY[$row]+set}" ]; then
  echo "error: unknown row '${row}'; valid rows: ${ORDER[*]}" >&2
  exit 2
fi

# learner -> flag prefix of its output paths ("" : the framework's --save_path*)
prefix_of() {
  case "$1" in
    full-prec) echo "" ;;
    channel) echo cp ;;
    chn-pruned-rmt) echo cpr ;;
    chn-pruned-gpu) echo cpg ;;
    dis-chn-pruned) echo dcp ;;
    weight-sparse) echo ws ;;
    uniform) echo uql ;;
    non-uniform) echo nuql ;;
    uniform-tf) echo uqtf ;;
    *) echo "error: scripts/reproduce.tsv: learner '$1' has no output-path rule in $0" >&2
       return 2 ;;
  esac
}

complete_model() { [ -f "$models/$1/eval/model.ckpt" ] && [ ! -e "$models/$1/eval/INCOMPLETE" ]; }

# The command of one row, into the array CMD.
command_of() {
  local id=$1 learner prefix dir=$models/$1 full
  read -r -a row_flags <<< "${FLAGS[$id]}"
  learner=full-prec
  for flag in "${row_flags[@]}"; do
    case "$flag" in --learner=*) learner=${flag#--learner=} ;; esac
  done
  prefix=$(prefix_of "$learner")
  local paths=()
  if [ -z "$prefix" ]; then
    paths=(--save_path="$dir/train/model.ckpt" --save_path_eval="$dir/eval/model.ckpt")
  else
    full=$models/${NEEDS[$id]}
    [ "${NEEDS[$id]}" = "-" ] && full=$dir/full
    local artifact=model.ckpt
    [ "$prefix" = uqtf ] && artifact=model.pte
    paths=(--save_path="$full/train/model.ckpt" --save_path_eval="$full/eval/model.ckpt"
           --"${prefix}"_save_path="$dir/train/model.ckpt"
           --"${prefix}"_save_path_eval="$dir/eval/$artifact")
    case "$prefix" in
      cp|cpr|cpg|dcp) paths+=(--"${prefix}"_save_path_ws="$dir/ws/model.ckpt") ;;
    esac
  fi
  local launcher=$root/scripts/run_local.sh entry=$root/${ENTRY[$id]}
  if [ "$PWD" = "$root" ]; then launcher=scripts/run_local.sh; entry=${ENTRY[$id]}; fi
  CMD=("$launcher" "$entry" "${row_flags[@]}" "${paths[@]}" --log_dir="$dir/logs"
       ${extra[@]+"${extra[@]}"})
}

show() { local out="" word; for word in "$@"; do out+="$(printf '%q' "$word") "; done
         printf '%s\n' "${out% }"; }

steps=()
chain=" "
add_steps() {   # the needs first (recursively), then the row itself
  local id=$1 need=${NEEDS[$1]}
  case "$chain" in *" $id "*) echo "error: scripts/reproduce.tsv: needs cycle at '$id'" >&2
                             exit 2 ;; esac
  chain+="$id "
  if [ "$need" != "-" ]; then
    if [ -z "${ENTRY[$need]+set}" ]; then
      echo "error: scripts/reproduce.tsv: row '$id' needs unknown row '$need'" >&2; exit 2
    fi
    if complete_model "$need"; then
      echo "note: $need: complete model at $models/$need/eval/model.ckpt, not trained again" >&2
    else
      add_steps "$need"
    fi
  fi
  steps+=("$id")
}
add_steps "$row"

for id in "${steps[@]}"; do
  command_of "$id"
  if [ "$dry_run" -eq 1 ]; then
    show "${CMD[@]}"
  else
    echo "reproduce: $id (PocketFlow: ${PUBLISHED[$id]})" >&2
    show "${CMD[@]}" >&2
    "${CMD[@]}"
  fi
done
