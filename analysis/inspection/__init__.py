"""Looking inside a trained run: misclassified images, CAM heat maps, accuracy and confusions."""
