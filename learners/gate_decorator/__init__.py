"""``--learner=gate-decorator``: global filter pruning by gated batch norms (You et al., 2019).

Modules: ``learner`` (tick-tock rounds, melting the gates, thinning), ``config``; the gates and
their Taylor ranking are ``compression.selection.gates``.
"""
