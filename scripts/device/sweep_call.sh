#!/usr/bin/env bash
# On the lent GPU machine, second call of a sweep (scripts/device/README.md): unpack the second
# half, prepare, then train `--recipe fast --seed 0 FLAGS` for each NAME:FLAGS, up to P runs at
# once on the one GPU (each process alone leaves it mostly idle between small kernels), in the
# order given, starting a run only while the time left exceeds EST seconds. Usage there:
#   BUDGET=SECONDS P=4 EST=150 bash scripts/device/sweep_call.sh PART_DIR "NAME:FLAGS" ...
# $OUT gets sweep.log, runs.tgz (every run's config, metrics, summary and log; no checkpoints) and
# the weights (no optimizer state) of the best finished run of ≤ 15 epochs by its own final test
# accuracy, split in 15 MiB pieces: `cat best-weights.pt.part* > RUN/last.pt` rebuilds a checkpoint.
set -u
export PYTHONUNBUFFERED=1
start=$(date +%s)
exec > >(tee "$OUT/sweep.log") 2>&1
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
P=${P:-4}
EST=${EST:-150}
nvidia-smi -L
CIFAR=${CIFAR:-/tmp/cifar/cifar-10-batches-py}  # where the first call unpacked its half
[ -f "$CIFAR/test_batch" ] || { echo "the first call's half is gone (a fresh machine)"; exit 3; }
python3 scripts/device/cifar_pack.py unpack "$1" "$CIFAR" || exit 4
shift
[ -f data/train.npz ] || python3 cli.py prepare --source "$CIFAR" --out data || exit 5
mkdir -p runs
pids=()
train() {  # NAME FLAGS...: one run, its output in runs/NAME.log, killed 20 s before the budget ends
  local name=$1 began
  shift
  began=$(date +%s)
  timeout --signal=TERM $(( $(left) - 20 )) python3 cli.py train --data data --loader torch --device cuda \
    --run "runs/$name" --recipe fast --seed 0 --quiet "$@" > "runs/$name.log" 2>&1
  echo "== $name rc=$? took $(( $(date +%s) - began )) s, $(left) s left: $(cat "runs/$name/summary.json" 2>/dev/null | tr -d '\n ')"
}
for spec in "$@"; do
  while [ "$(jobs -rp | wc -l)" -ge "$P" ]; do sleep 1; done
  [ "$(left)" -gt "$EST" ] || { echo "no time left for ${spec%%:*}"; continue; }
  echo "start ${spec%%:*} at $(( $(date +%s) - start )) s"
  # shellcheck disable=SC2086  # the flags are meant to split into words
  train "${spec%%:*}" ${spec#*:} &
  pids+=($!)
done
# The pids, not a bare `wait` (nor an empty list, which is one): that would also wait for the `tee`
# above, which ends only with the script.
[ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
tar czf "$OUT/runs.tgz" --exclude='*.pt' runs data/manifest.json
best=$(python3 - <<'PY'
import json
from pathlib import Path

scored = []
for summary in Path("runs").glob("*/summary.json"):
    s = json.loads(summary.read_text())
    if s.get("status") == "finished" and s.get("epochs", 99) <= 15 and s.get("final_test_acc") is not None:
        scored.append((s["final_test_acc"], summary.parent.name))
print(max(scored)[1] if scored else "")
PY
)
if [ -n "$best" ]; then
  echo "weights back: $best"
  python3 scripts/device/weights_back.py "runs/$best" best-weights
fi
echo "sweep call: $(( $(date +%s) - start )) s"
