#!/usr/bin/env bash
# On the lent GPU machine, first of two back-to-back calls (scripts/device/README.md): unpack the
# first half of the packed data into /tmp (it stays while the machine is warm), then `bench gpu`
# on synthetic images. Usage there: bash scripts/device/first_call.sh PART_DIR
set -u
export PYTHONUNBUFFERED=1
start=$(date +%s)
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 scripts/device/cifar_pack.py unpack "$1" /tmp/cifar/cifar-10-batches-py || echo "unpack failed: the second call will stop"
timeout 250 python3 cli.py bench gpu --data /tmp/nodata --norms layer --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
echo "first call: $(( $(date +%s) - start )) s"
