"""One validation task: ``python -m supervisor.validate.task REQUEST.json``, as the
pipeline's pool (``run/validation.py``) runs it for a part of a round.

REQUEST (JSON)::

    {"results": "<a round's .npy as main.py wrote it>", "items": [indices into its list],
     "object_code": "...", "checkout": "<the BimanGrasp-Optimization folder>",
     "settings": {<ValidateSettings.protocol()>}, "out": "<path of the .npz to write>"}

validates those grasps (``builtin.check``) and writes ``out`` atomically (temp file in the
same folder, fsync, rename): the five columns for exactly those items, in that order;
exit 0. Anything it cannot serve (an unreadable request or results file, an index out of
range, a missing mesh, MuJoCo's own error) is one line on stderr and exit 1, ``out``
untouched: the pool retries the task and, past ``[validate] max_attempts``, stops the run
naming the validator. A process per task costs about a second of start-up against the
tens of seconds a part's grasps take; it keeps nothing from one task to the next, so a
task's figures depend on its request alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from supervisor.dataset.results import ResultError, load_items
from supervisor.storage.fsutil import atomic_write
from supervisor.validate.builtin import ValidateError, check, settings_from

KEYS = ("results", "items", "object_code", "checkout", "settings", "out")
EXIT_FAILED = 1
EXIT_USAGE = 2


class RequestError(ValueError):
    """A request the task cannot serve; one line."""


def parse(text: str) -> dict[str, Any]:
    """A request, checked for its keys and their types; raises RequestError."""
    try:
        request = json.loads(text)
    except ValueError as exc:
        raise RequestError(f"not a JSON request ({exc})") from None
    if not isinstance(request, dict):
        raise RequestError("a request is a JSON object")
    missing = [k for k in KEYS if k not in request]
    if missing:
        raise RequestError(f"the request lacks {', '.join(missing)}")
    items = request["items"]
    if not isinstance(items, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise RequestError("items must be a list of integer indices")
    if not all(isinstance(request[k], str) and request[k]
               for k in ("results", "object_code", "checkout", "out")):
        raise RequestError("results, object_code, checkout and out must be non-empty strings")
    if not isinstance(request["settings"], dict):
        raise RequestError("settings must be a JSON object (ValidateSettings.protocol())")
    return request


def serve(request: dict[str, Any]) -> int:
    """Validate a parsed request and write its .npz; the number of grasps. Raises
    RequestError or ValidateError."""
    settings = settings_from(request["settings"])
    try:
        grasps = load_items(Path(request["results"]))
    except ResultError as exc:
        raise RequestError(f"{request['results']}: {exc}") from None
    bad = [i for i in request["items"] if not 0 <= i < len(grasps)]
    if bad:
        raise RequestError(f"item {bad[0]} is not in {request['results']} "
                           f"({len(grasps)} grasps)")
    columns = check(Path(request["checkout"]), request["object_code"],
                    [grasps[i] for i in request["items"]], settings)
    atomic_write(Path(request["out"]), lambda f: np.savez(f, **columns))
    return len(request["items"])


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m supervisor.validate.task REQUEST.json", file=sys.stderr)
        return EXIT_USAGE
    try:
        serve(parse(Path(argv[0]).read_text()))
    except (OSError, RequestError, ValidateError) as exc:
        print(f"validate: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # MuJoCo's or numpy's own: still one line for the pool
        print(f"validate: {type(exc).__name__}: {' '.join(str(exc).split())}",
              file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
