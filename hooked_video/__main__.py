"""``python -m hooked_video ...``: the ``hooked-video`` command, for environments without its script on PATH."""

import sys

from hooked_video.app.cli import main

sys.exit(main())
