"""Using a trained run's model on new input: classify image files, export for serving."""
