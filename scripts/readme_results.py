"""The README's Results figures from one finished run, in one command.

Usage: python scripts/readme_results.py RUN_DIR [IMAGES_DIR=docs/images/<RUN_DIR's name>]

Runs what `explain --layer 3 --layer 4 --count 10`, `evaluate --tta` and `evaluate` run (the CLI's
own command bodies, in one process, so torch is imported once) and draws the run beside the
original's log (beside_original.py). explain prints the ROAD score of each map and their means;
evaluate --tta prints the run's TTA accuracy beside the plain one and is kept as
analysis/evaluation_tta.json, because the plain `evaluate` that follows writes evaluation.json and
the confusion matrix for the reported model. The images folder gets time_to_accuracy.png and copies
of the gallery and the confusion matrix; the Grad-CAM figures are re-encoded as JPEG at 75% scale to
keep the pages light. Every file is written through common.atomic: an interrupted run leaves the
previous image, never half of one.
(35 s for a width-16 proxy on 2 cores; the TTA pass runs the model two or six times over the test
set, so the full ResNet-18 takes minutes on a CPU.)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from the repo root

from analysis.outputs import AnalysisFiles  # noqa: E402  (after the path line above)
from cli_analysis import evaluate_command, explain_command  # noqa: E402
from common.atomic import atomic_path  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.rundir import RunDir  # noqa: E402
from scripts import beside_original  # noqa: E402

LAYERS = (3, 4)
CAM_METHOD = "gradcam"
CAM_SCALE = 0.75


def copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    print(f"wrote {dst}")


def cam_as_jpeg(src: Path, dst: Path) -> None:
    from PIL import Image

    img = Image.open(src).convert("RGB")
    img = img.resize((round(img.width * CAM_SCALE), round(img.height * CAM_SCALE)), Image.Resampling.LANCZOS)
    with atomic_path(dst) as tmp:
        img.save(tmp, "JPEG", quality=85)
    print(f"wrote {dst}")


def main(run: Path, images: Path) -> None:
    files = AnalysisFiles.of(RunDir(run))
    explain_command(run, layer=LAYERS, count=10, method=CAM_METHOD)
    evaluate_command(run, tta=True)
    copy_atomic(files.evaluation, files.folder / "evaluation_tta.json")
    evaluate_command(run)
    beside_original.main(images / "time_to_accuracy.png", [run])
    copy_atomic(files.gallery, images / files.gallery.name)
    copy_atomic(files.confusion_matrix, images / files.confusion_matrix.name)
    for layer in LAYERS:
        figure = files.cam_figure(CAM_METHOD, layer)
        cam_as_jpeg(figure, images / figure.with_suffix(".jpg").name)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python scripts/readme_results.py RUN_DIR [IMAGES_DIR=docs/images/<RUN_DIR's name>]")
    run_dir = Path(sys.argv[1])
    try:  # a folder per run: docs/images/ itself holds docs/STUDIES.md's figures of another run
        main(run_dir, Path(sys.argv[2]) if len(sys.argv) == 3 else Path("docs/images") / run_dir.resolve().name)
    except UserError as exc:
        sys.exit(f"error: {exc}")
