"""``--learner=schedule``: a Distiller-style YAML compression schedule (``--compress``)."""
