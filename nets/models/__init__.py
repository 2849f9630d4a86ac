"""Built-in network definitions; importing this package registers them all."""
from nets.models import distiller_cifar, lenet, mobilenet, resnet_cifar, resnet_imagenet  # noqa: F401

__all__ = ["distiller_cifar", "lenet", "mobilenet", "resnet_cifar", "resnet_imagenet"]
