"""For tests that kill a run midway, in a subprocess: SIGKILL the process from inside a forward."""

import os
import signal


def kill_after(model, calls: int) -> None:
    """SIGKILL this process when the last decoder layer of ``model`` (a HookedVideoLLM) has run
    ``calls`` times; 0 never kills. The sweep engine runs that layer once per chunk of passes."""
    if not calls:
        return
    seen = [0]

    def count(module, args, output):
        seen[0] += 1
        if seen[0] == calls:
            os.kill(os.getpid(), signal.SIGKILL)

    model.hf_model.model.language_model.layers[-1].original_component.register_forward_hook(count)
