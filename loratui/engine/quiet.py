"""Keep library chatter off the user's console and dashboard.

transformers and diffusers print progress bars and advice meant for their own
developers (missing torchvision, dtype casts, shard writing); in a TUI they
would scribble over the screen. Real problems still reach us as exceptions.
"""

from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lib in (dlog, tlog):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    warnings.filterwarnings("ignore", module=r"(diffusers|transformers|accelerate)\.")
