"""The training engine: the one loop (``trainer``), its standard callbacks and distillation.
Below compression (whose schedules are callbacks of it) and the learners."""
