"""The analyses, each a set of plain functions over a model, prompts and hooks: attention
``knockout`` (edge sets from token maps, windows, hooks), ``flow`` (knockout sweeps over the paper's
targets), ``lens`` (logit lens, keywords, answer probability by layer), ``patching`` (frame- and
position-level activation patching), ``attribution`` (the knockout rows estimated from gradients:
attribution patching), ``pathways`` (effective-pathway pruning) and ``accuracy``.
Each is also reachable as ``hooked_video.<name>``."""
