"""Distiller-style compression schedules: a YAML policy (``policy``) of pruners, regularizers,
quantizers, LR schedulers and thinning extensions, run by one trainer callback (``scheduler``)."""
