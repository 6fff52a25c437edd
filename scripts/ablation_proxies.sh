#!/usr/bin/env bash
# Issue 21's ablation proxies: each row changes one flag of `--recipe fast` and trains a width-16
# ResNet-18 (same blocks and norms, 1/16 of the compute) on the first 10,000 training images for
# 5 epochs (195 steps of 256), scored on the full test set; then prints the table (docs/BENCHMARKS.md).
#   scripts/ablation_proxies.sh [OUT_DIR=runs/ablation] [SET=cutout]
# SET names one of docs/BENCHMARKS.md's proxy tables: `cutout` (2026-12-03, 19 rows, ≈ 6 min a row
# on one core of a Zen 3 box) or `weight-std` (2026-12-04, 10 rows, ≈ 1.5 min a row on the Xeon).
# Rows already finished are skipped and an interrupted row resumes, so the script can be re-run.
# One torch thread and one loader thread per run: it can share the machine with a full run.
set -euo pipefail
out=${1:-runs/ablation}
set_name=${2:-cutout}
py=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1
proxy=(--width 16 --subset 10000 --epochs 5 --workers 1 --no-tensorboard --quiet)
# The recipe as docs/BENCHMARKS.md's proxy table measured it: with its 8-pixel cutout, which
# `--recipe fast` dropped on 2026-12-04 after full-data runs (the no-cutout row is that change).
fast=(--recipe fast --cutout)
row() {  # row NAME FLAGS...
  local name=$1; shift
  local dir=$out/$name
  if [ -f "$dir/summary.json" ] && grep -q '"finished"' "$dir/summary.json"; then return; fi
  echo "$(date +%T) $name: $*"
  if [ -f "$dir/last.pt" ]; then
    "$py" cli.py train --resume "$dir" --quiet
  else
    "$py" cli.py train "${proxy[@]}" --run "$dir" "$@"
  fi
}
weight_std_rows() {  # the recipe as it is (no cutout): Weight Standardization and pad 2, 2-3 seeds
  for seed in 0 1 2; do row base-s$seed --recipe fast --seed $seed; done
  for seed in 0 1 2; do row ws-s$seed --recipe fast --seed $seed --weight-std; done
  for seed in 0 1; do row pad2-s$seed --recipe fast --seed $seed --pad 2; done
  for seed in 0 1; do row wspad2-s$seed --recipe fast --seed $seed --weight-std --pad 2; done
}
cutout_rows() {  # the recipe with its 8-pixel cutout: one flag changed per row
row base-s0 "${fast[@]}" --seed 0
row default --seed 0 --val 1000
row lr0.1 "${fast[@]}" --seed 0 --lr 0.1
row lr0.4 "${fast[@]}" --seed 0 --lr 0.4
row no-cutout --recipe fast --seed 0 --no-cutout
row ls0 "${fast[@]}" --seed 0 --label-smoothing 0
row ema0.99 "${fast[@]}" --seed 0 --ema 0.99
row decay-all "${fast[@]}" --seed 0 --decay-all
row no-nesterov "${fast[@]}" --seed 0 --no-nesterov
row base-s1 "${fast[@]}" --seed 1
row bs128 "${fast[@]}" --seed 0 --batch-size 128 --lr 0.1
row bs512 "${fast[@]}" --seed 0 --batch-size 512 --lr 0.4
row rotate "${fast[@]}" --seed 0 --rotate
row cutout16 "${fast[@]}" --seed 0 --cutout-size 16
row shortcut-layer "${fast[@]}" --seed 0 --shortcut-norm same
row no-zero-init "${fast[@]}" --seed 0 --no-zero-init
row peak0.1 "${fast[@]}" --seed 0 --peak-at 0.1
row border-constant "${fast[@]}" --seed 0 --border constant
row base-s2 "${fast[@]}" --seed 2
}
case $set_name in
  cutout) cutout_rows ;;
  weight-std) weight_std_rows ;;
  *) echo "unknown SET $set_name: cutout or weight-std" >&2; exit 2 ;;
esac
"$py" - "$out" <<'PY'
import sys
from pathlib import Path
from common.rundir import RunDir
print("| row | flags beyond the proxy's | epochs | test acc | flip TTA | train acc |\n|---|---|---:|---:|---:|---:|")
for path in sorted(Path(sys.argv[1]).iterdir(), key=lambda p: p.stat().st_mtime):
    run = RunDir(path)
    rows = run.read_metrics()
    if not rows:
        continue
    command = run.read_config()["command"]
    flags = " ".join(command[command.index("--run") + 2 :])
    test, train = 100 * rows[-1]["test_acc"], 100 * rows[-1]["train_acc"]
    tta = rows[-1].get("test_acc_tta")
    tta_cell = f"{100 * tta:.2f}%" if isinstance(tta, float) and tta == tta else "—"
    print(f"| {path.name} | `{flags}` | {rows[-1]['epoch']} | {test:.2f}% | {tta_cell} | {train:.2f}% |")
PY
