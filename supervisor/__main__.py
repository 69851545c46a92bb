import os
import sys

try:
    from supervisor.cli import main_guarded
except KeyboardInterrupt:  # Ctrl+C while the imports run: no traceback
    os._exit(130)

sys.exit(main_guarded())
