"""The channel-pruning learners, one family over ``ChannelLearnerBase`` (``base``):
layers -> kept counts (``compression.budget``) -> selection (``compression.selection``) ->
physical thinning (``compression.surgery``) -> fine-tuning.

Modules: ``base`` (the shared flow, residual groups, the roll-out scorer), ``options`` (output
paths, skip rules, the strategy protocols), ``config`` (each learner's options),
``search_env`` (the DDPG environment of a channel strategy), and one module per learner:
``he2017`` (``channel``: He et al. 2017 with AMC-style DDPG ratios), ``rmt``
(``chn-pruned-rmt``: LASSO by ISTA + least squares), ``gpu`` (``chn-pruned-gpu``: L2,1
proximal selection + masked Adam), ``dcp`` (``dis-chn-pruned``: discrimination-aware).
"""
