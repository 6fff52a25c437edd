"""Models: ResNet-18 (CIFAR variant) with a switchable normalisation layer."""

from models.resnet import ResNet18, build_model, count_parameters

__all__ = ["ResNet18", "build_model", "count_parameters"]
