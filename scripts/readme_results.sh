#!/usr/bin/env bash
# The README's Results figures from one finished run, in one command: its accuracy against epochs
# and minutes beside the original's log, the gallery of its surest mistakes, Grad-CAM at layers 3
# and 4 with ROAD scores, the confusion matrix, and the flip-TTA accuracy beside the plain one.
#   scripts/readme_results.sh RUN [IMAGES_DIR=docs/images]
# (57 s for a width-16 proxy on 2 cores; the flip-TTA pass runs the model twice over the test set,
# so the full ResNet-18 takes minutes on a CPU.)
# The run's own analysis/ folder keeps every output (PNGs, *_scores.json, evaluation.json and
# evaluation_tta.json); the images folder gets copies, the Grad-CAM figures re-encoded as JPEG at
# 75% scale to keep the pages light.
set -euo pipefail
run=${1:?usage: scripts/readme_results.sh RUN [IMAGES_DIR]}
images=${2:-docs/images}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$images"
"$py" cli.py explain --run "$run" --layer 3 --layer 4 --count 10
"$py" cli.py evaluate --run "$run" --tta                  # flip TTA beside the plain accuracy
cp "$run/analysis/evaluation.json" "$run/analysis/evaluation_tta.json"
"$py" cli.py evaluate --run "$run"                        # the confusion matrix of the reported model
"$py" scripts/beside_original.py "$images/time_to_accuracy.png" "$run"
for f in misclassified.png confusion_matrix.png; do  # copy, then rename: never a half-written image
  cp "$run/analysis/$f" "$images/.$f.tmp" && mv "$images/.$f.tmp" "$images/$f"
done
"$py" - "$run/analysis" "$images" <<'EOF'
import json
import sys
from pathlib import Path
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for layer in (3, 4):
    img = Image.open(src / f"gradcam_layer{layer}.png").convert("RGB")
    img = img.resize((round(img.width * 0.75), round(img.height * 0.75)), Image.LANCZOS)
    tmp = dst / f".gradcam_layer{layer}.jpg.tmp"
    img.save(tmp, "JPEG", quality=85)
    tmp.replace(dst / f"gradcam_layer{layer}.jpg")
    road = json.loads((src / f"gradcam_layer{layer}_scores.json").read_text())["mean"]
    print(f"Grad-CAM layer {layer}: mean ROAD {road:+.2f} (range -0.5 to +0.5, higher is more faithful)")
EOF
echo "wrote $images/{time_to_accuracy.png,misclassified.png,confusion_matrix.png,gradcam_layer3.jpg,gradcam_layer4.jpg}"
