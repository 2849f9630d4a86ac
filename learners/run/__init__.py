"""Everything around a learner's ``compress``: the run.

``Runner(helper, cfg, mgw).run(learner)`` loads the starting model, gives the learner a
``Context``, and after ``compress`` writes the artifact, the report's figures, the deployment
files checked in their runtimes and ``report.json``.

Modules: ``runner`` (the run, eval mode), ``context`` (what a learner gets: data, the one
training loop, evaluation, the teacher, rank-0 searches), ``outputs`` (files beside the
artifact), ``checkpointing`` (checkpoint and evaluation as a callback of the loop), ``resume``
(what ``--resume`` checks), ``report`` (the typed report), ``composition`` (chains of
learners).
"""
