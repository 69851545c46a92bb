"""An emulator of BimanGrasp's main.py on a CPU (``python -m supervisor.emulator``), the
child of the tests and the demo: its command line, files and output (``main``), its fault
modes and worker grandchild (``faults``), its deterministic grasps (``grasps``). It
imports only ``dataset`` (the result format's names): it runs as a child, apart from the
supervisor.
"""
