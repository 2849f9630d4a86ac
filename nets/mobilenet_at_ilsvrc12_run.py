"""Entry: MobileNet on ILSVRC-12 (the ``mobilenet_at_ilsvrc12`` helper).

./scripts/run_local.sh nets/mobilenet_at_ilsvrc12_run.py --learner=full-prec
"""
from learners.launch import entry

if __name__ == "__main__":
    entry("mobilenet_at_ilsvrc12")
