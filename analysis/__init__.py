"""Looking inside a trained run: misclassified images, CAM heat maps, accuracy and confusions.

Everything here reads a run directory (see `common.rundir`) and the test arrays written by
`prepare` (`pipeline.manifest.read_test_arrays`). It never imports FFCV (slow to import) or `training/`, and
the heavy libraries (torch, pytorch_grad_cam, matplotlib) are imported inside the functions that
need them, so importing this package is instant.
"""
