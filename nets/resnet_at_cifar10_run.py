"""Entry: ResNet-20/32/44/56 on CIFAR-10 (the ``resnet_at_cifar10`` helper).

./scripts/run_local.sh nets/resnet_at_cifar10_run.py --learner=full-prec
"""
from learners.launch import entry

if __name__ == "__main__":
    entry("resnet_at_cifar10")
