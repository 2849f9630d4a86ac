"""Built-in network definitions; importing this package registers them all."""
from nets.models import lenet, mobilenet, resnet_cifar, resnet_imagenet  # noqa: F401

__all__ = ["lenet", "mobilenet", "resnet_cifar", "resnet_imagenet"]
