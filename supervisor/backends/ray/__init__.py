"""The Ray backend: one supervisor on the head runs rounds on every GPU of a Ray cluster.
``backend`` (RayBackend, the backend interface) over ``cluster`` (one worker per GPU, lines
and result bytes back to the head), joined through ``connect`` (the only place that
imports Ray), with ``remote`` (what crosses between head and node) and ``node`` (what runs
on each node, Ray-free). Part of ``backends``: it imports what that part may.
"""
