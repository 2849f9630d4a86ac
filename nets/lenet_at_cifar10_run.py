"""Entry: lenet_at_cifar10.

./scripts/run_local.sh nets/lenet_at_cifar10_run.py --learner=full-prec
"""
from absl import app, flags

from learners.launch import define_flags, main
from nets.lenet_at_cifar10 import ModelHelper

define_flags(flags.FLAGS, ModelHelper)

if __name__ == "__main__":
    app.run(lambda argv: main(ModelHelper, flags.FLAGS.flag_values_dict(), argv))
