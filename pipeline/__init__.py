"""Data: CIFAR-10 source → validated arrays → FFCV .beton files → augmented batches."""
