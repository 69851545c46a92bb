import sys

from supervisor.cli import main_guarded

sys.exit(main_guarded())
