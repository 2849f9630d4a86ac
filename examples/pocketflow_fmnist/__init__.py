"""PocketFlow's Fashion-MNIST tutorial (docs/self_defined_models.md), ported to torch: each
file keeps PocketFlow's name and structure; lines that differ say ``# port:`` and why."""
