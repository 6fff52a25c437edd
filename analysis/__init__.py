"""Everything done with a trained run, one sub-package per concern.

    inspection/   look inside a run: explain (selection, faithfulness), evaluate, the test
                  predictions, TensorBoard images
    model_use/    use the model on new input: predict (image_files), export (normalized_model)
    report/       the HTML page: report, ensure (make missing outputs), run_page / compare_page,
                  html (the only markup writer)
    compare/      the norm comparison's read side: tables (figure and tables), stats (over seeds)
    loading, gradcam, gallery, figures, outputs   shared by the sub-packages

Everything here reads a run directory (see `common.rundir`) and the test arrays written by
`prepare` (`pipeline.manifest.read_test_arrays`). It never imports FFCV (slow to import) or
`training/`, and the heavy libraries (torch, pytorch_grad_cam, matplotlib) are imported inside the
functions that need them, so importing this package is instant.
"""
