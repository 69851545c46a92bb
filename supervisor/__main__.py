"""``python -m supervisor``: the command line (``supervisor.commands.cli``)."""

import os
import signal
import sys


def _interrupted(*_: object) -> None:
    raise KeyboardInterrupt  # main_guarded: exit 130


def _open_std_streams() -> None:
    """A closed stdout or stderr (``>&-``): /dev/null there, so that no file the run
    opens gets descriptor 1 or 2 and no print fails."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
        if getattr(sys, name) is None:
            setattr(sys, name, os.fdopen(fd, "w", buffering=1))


# Ctrl+C, a hang-up or SIGTERM while the imports run (a second or more on a cold disk):
# leave at once with 130, never a traceback from whichever import it interrupted.
for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, lambda *_: os._exit(130))
_open_std_streams()
from supervisor.commands.cli import main_guarded  # noqa: E402

# Until the run's own signal handling starts: a clean exit 130, nothing written yet.
signal.signal(signal.SIGINT, signal.default_int_handler)
for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _interrupted)
sys.exit(main_guarded())
