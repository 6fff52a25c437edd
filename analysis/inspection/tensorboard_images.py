"""Analysis figures (explain's gallery and Grad-CAM PNGs) as TensorBoard images of a run.

    add_figures(run_path, [gallery_png, gradcam_layer3_png], step=epoch)

They go to RUN/tb/analysis/, a sub-folder of training's RUN/tb/, so TensorBoard lists them as a
run of their own: training's resume purge (training/tensorboard_log.py purges steps >= the
resumed epoch in RUN/tb/) can never drop them, and re-running explain adds a new step rather than
touching the scalars. Each tag is "<prefix>/<file stem>" (explain/misclassified,
explain/gradcam_layer3, ...). Kept in analysis/ because analysis must not import training/.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import UserError

TB_IMAGES_DIR = Path("tb") / "analysis"


def add_figures(run_path: str | Path, figures: Sequence[str | Path], step: int = 0,
                prefix: str = "explain") -> Path:
    """Write each PNG/JPEG figure as an image summary at `step`; returns the event folder."""
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    out = Path(run_path) / TB_IMAGES_DIR
    arrays = []
    for fig in figures:
        fig = Path(fig)
        try:
            with Image.open(fig) as img:
                arrays.append((f"{prefix}/{fig.stem}", np.asarray(img.convert("RGB"))))
        except OSError as exc:
            raise UserError(f"cannot read the figure {fig} for TensorBoard ({exc}); run explain again") from None
    writer = SummaryWriter(log_dir=str(out))
    try:
        for tag, arr in arrays:
            writer.add_image(tag, arr, global_step=step, dataformats="HWC")
    finally:
        writer.close()
    return out
