"""Entry: ResNet on the embedded digits data (the default demo) (the ``resnet_at_digits`` helper).

./scripts/run_local.sh nets/resnet_at_digits_run.py --learner=full-prec
"""
from learners.launch import entry

if __name__ == "__main__":
    entry("resnet_at_digits")
