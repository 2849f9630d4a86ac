"""Entry: the tutorial ConvNet on Fashion-MNIST (examples/convnet_at_fmnist.py).

./scripts/run_local.sh examples/convnet_at_fmnist_run.py --learner=full-prec

Your own entry script is the same two lines with your helper: ``entry(MyHelper)`` (a class),
``entry("my_pkg.my_module:MyHelper")``, or a name given by ``register_helper``.
"""
from pocketflow_torch import entry

if __name__ == "__main__":
    entry("convnet_at_fmnist")
