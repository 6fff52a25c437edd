#!/usr/bin/env bash
# On the lent GPU machine, second call (scripts/device/README.md): unpack the second half, prepare,
# train `--recipe fast` seed 0 and bring back its files and weights, then more runs while the budget
# lasts. Usage there: BUDGET=SECONDS bash scripts/device/second_call.sh PART_DIR [NAME:FLAGS ...]
# e.g. BUDGET=540 bash scripts/device/second_call.sh .gpu/p2 "fast-s1:--seed 1" "nocut:--no-cutout"
# Each extra run is `train --recipe fast --seed 0 FLAGS` (later flags win), started only while the
# time left exceeds 1.2 × seed 0's. $OUT gets NAME-files.tgz per run (no checkpoints) and seed 0's
# weights without the optimizer state, split in 15 MiB pieces (the tool returns files ≤ 16 MiB):
# `cat fast-s0-weights.pt.part* > RUN/last.pt` rebuilds a checkpoint that evaluate/explain load.
set -u
export PYTHONUNBUFFERED=1
start=$(date +%s)
exec > >(tee "$OUT/second_call.log") 2>&1
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
[ -f /tmp/cifar/cifar-10-batches-py/test_batch ] || { echo "the first call's half is gone (a fresh machine)"; exit 3; }
python3 scripts/device/cifar_pack.py unpack "$1" /tmp/cifar/cifar-10-batches-py || exit 4
shift
python3 cli.py prepare --source /tmp/cifar/cifar-10-batches-py --out data || exit 5
train() {  # NAME FLAGS...
  local name=$1 began
  shift
  began=$(date +%s)
  timeout --signal=TERM $(( $(left) - 25 )) python3 cli.py train --data data --loader torch --device cuda \
    --run "runs/$name" --recipe fast --seed 0 "$@"
  echo "== $name rc=$? took $(( $(date +%s) - began )) s, $(left) s left"
  tar czf "$OUT/$name-files.tgz" --exclude='*.pt' "runs/$name" data/manifest.json
}
began=$(date +%s)
train fast-s0
first=$(( $(date +%s) - began ))
python3 scripts/device/weights_back.py runs/fast-s0 fast-s0-weights
for spec in "$@"; do
  [ "$(left)" -gt $(( first + first / 5 + 40 )) ] || { echo "no time left for ${spec%%:*}"; continue; }
  # shellcheck disable=SC2086  # the flags are meant to split into words
  train "${spec%%:*}" ${spec#*:}
done
echo "second call: $(( $(date +%s) - start )) s"
