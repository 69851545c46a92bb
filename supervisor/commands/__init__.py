"""The command line: ``python -m supervisor CONFIG`` and its commands (``cli``), the pieces
they share (``args``: the one-line parser, the config overrides), ``status``, ``recover``,
``dataset-info`` (``dataset_info``), ``--dry-run`` (``dryrun``) and the HTML report
(``report/``). It may import every part but ``emulator``; nothing imports it but
``supervisor.__main__``.
"""
