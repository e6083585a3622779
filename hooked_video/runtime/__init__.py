"""How forwards run, whatever the analysis: blocked-edge masks (``EdgeSet``), the fast attention and
plain-HF blocks for what nobody hooks, the sweep engine that recomputes only what a knockout
changes, capturing activations, the transactional results store, and data-parallel shards. Nothing
here knows a token map or an analysis; the model and the analyses build on it."""
