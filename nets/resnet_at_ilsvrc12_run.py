"""Entry: ResNet on ILSVRC-12 (the ``resnet_at_ilsvrc12`` helper).

./scripts/run_local.sh nets/resnet_at_ilsvrc12_run.py --learner=full-prec
"""
from learners.launch import entry

if __name__ == "__main__":
    entry("resnet_at_ilsvrc12")
