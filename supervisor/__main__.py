import os
import signal
import sys

# Ctrl+C while the imports run (a second or more on a cold disk): leave at once with
# 130, never a traceback from whichever import it interrupted.
signal.signal(signal.SIGINT, lambda *_: os._exit(130))
from supervisor.cli import main_guarded  # noqa: E402

signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(main_guarded())
