"""PocketFlow's ``nets/convnet_at_fmnist_run.py``, ported: its flags (``log_dir``,
``enbl_multi_gpu``, ``learner``, ``exec_mode``, ``debug``), logging, learner creation and
train/eval dispatch are all ``entry``'s job here.

    ./scripts/run_local.sh examples/pocketflow_fmnist/convnet_at_fmnist_run.py --learner full-prec
    ./scripts/run_local.sh examples/pocketflow_fmnist/convnet_at_fmnist_run.py --learner uniform-tf
"""
from examples.pocketflow_fmnist.convnet_at_fmnist import ModelHelper
from pocketflow_torch import entry

if __name__ == '__main__':
  entry(ModelHelper)
