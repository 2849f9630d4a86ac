"""Entry: mobilenet_at_ilsvrc12.

./scripts/run_local.sh nets/mobilenet_at_ilsvrc12_run.py --learner=full-prec
"""
from absl import app, flags

from learners.launch import define_flags, main
from nets.mobilenet_at_ilsvrc12 import ModelHelper

define_flags(flags.FLAGS, ModelHelper)

if __name__ == "__main__":
    app.run(lambda argv: main(ModelHelper, flags.FLAGS.flag_values_dict(), argv))
