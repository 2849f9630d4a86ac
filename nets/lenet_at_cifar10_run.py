"""Entry: LeNet on CIFAR-10 (the ``lenet_at_cifar10`` helper).

./scripts/run_local.sh nets/lenet_at_cifar10_run.py --learner=full-prec
"""
from learners.launch import entry

if __name__ == "__main__":
    entry("lenet_at_cifar10")
