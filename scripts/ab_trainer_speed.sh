#!/usr/bin/env bash
# The trainer's own speed before/after a change: one short epoch of `cli.py train`, alternating two
# checkouts (e.g. `git worktree add ../before <commit>`, each with .venv and data/ linked in), N pairs.
#   scripts/ab_trainer_speed.sh BEFORE_DIR AFTER_DIR [PAIRS=3]
# Prints each run's epoch line (loss, accuracy, seconds, img/s): equal losses mean equal computation.
set -euo pipefail
before=$(cd "$1" && pwd); after=$(cd "$2" && pwd); pairs=${3:-3}
out=$(mktemp -d)
for i in $(seq "$pairs"); do
  for dir in "$before" "$after"; do
    name=$([ "$dir" = "$before" ] && echo before || echo after)
    (cd "$dir" && .venv/bin/python cli.py train --subset 2560 --val 256 --epochs 1 --test-subset 256 --seed 0 \
        --quiet --no-tensorboard --run "$out/$name-$i" > "$out/$name-$i.log" 2>&1)
    echo "$name $i: $(grep -E 'epoch +1/1' "$out/$name-$i.log")"
  done
done
rm -rf "$out"
