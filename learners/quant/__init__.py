"""The quantization learners: ``uniform`` and ``non-uniform`` (fake quantization over
``QuantLearnerBase``, ``base``) and ``uniform-tf`` (8-bit QAT converted to a real int8 program).

Modules: ``base`` (bits -> quantizers -> fine-tuning -> bit-packed file), ``config`` (each
learner's options), ``search_env`` (the DDPG environment of per-layer bit widths), one module
per learner.
"""
