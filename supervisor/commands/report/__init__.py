"""``python -m supervisor report``: one self-contained HTML page. Its numbers from the
manifest and journal (``data``) and from the final.npz files and GPU samples
(``series``), its plotly figures (``figures``), the page itself (``page``). Part of
``commands``: it imports what that part may, and reads only, never writes the run's files.
"""
