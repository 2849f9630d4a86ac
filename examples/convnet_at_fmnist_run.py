"""Entry: the tutorial ConvNet on Fashion-MNIST (examples/convnet_at_fmnist.py).

./scripts/run_local.sh examples/convnet_at_fmnist_run.py --learner=full-prec
"""
from absl import app, flags

from learners.launch import define_flags, main
from examples.convnet_at_fmnist import ModelHelper

define_flags(flags.FLAGS, ModelHelper)

if __name__ == "__main__":
    app.run(lambda argv: main(ModelHelper, flags.FLAGS.flag_values_dict(), argv))
