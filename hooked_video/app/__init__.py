"""What users run and read: the ``hooked-video`` command (``cli``: a light parser; ``commands``: what
each subcommand does), the demo on the bundled toys, ``reproduce`` (the paper's pipeline on a
real checkpoint) and the HTML report they write."""
