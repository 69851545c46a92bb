"""A validation worker: ``python -m supervisor.validate.worker``, long-lived, one request
per line on stdin, one answer per request on stdout.

A request (JSON)::

    {"results": "<a round's .npy as main.py wrote it>", "items": [indices into its list],
     "object_code": "...", "checkout": "<the BimanGrasp-Optimization folder>",
     "settings": {<ValidateSettings.protocol()>}, "out": "<path of the .npz to write>"}

validates those grasps (``builtin.check``) and writes ``out`` atomically (temp file in the
same folder, fsync, rename): the five columns for exactly those items, in that order.
Then it answers ``{"ok": true, "n": <count>}``. A request it cannot serve (not JSON, an
unreadable results file, an index out of range, a missing mesh) is answered
``{"ok": false, "error": "<one line>"}`` and the worker goes on. End of stdin ends it
(exit 0). Scenes are compiled once per checkout, object and scale and kept.

``VALIDATOR_FAULT`` (for the pipeline's tests) makes each worker process misbehave at its
first request, and serve the later ones: ``crash`` exits 3, ``hang`` sleeps for ever,
``junk`` writes a file at ``out`` that is not an .npz (and answers ok, as a broken
validator would).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from supervisor.dataset.results import ResultError, load_items
from supervisor.storage.fsutil import atomic_write, atomic_write_bytes
from supervisor.validate.builtin import ValidateError, check, settings_from

FAULT_VAR = "VALIDATOR_FAULT"
FAULTS = ("crash", "hang", "junk")
CRASH_EXIT = 3
KEYS = ("results", "items", "object_code", "checkout", "settings", "out")


class RequestError(ValueError):
    pass


def parse(line: str) -> dict[str, Any]:
    """A request line, checked for its keys and their types; raises RequestError."""
    try:
        request = json.loads(line)
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


def serve_one(request: dict[str, Any], fault: str | None = None) -> int:
    """Validate one parsed request and write its .npz; the number of grasps."""
    settings = settings_from(request["settings"])
    try:
        grasps = load_items(Path(request["results"]))
    except ResultError as exc:
        raise RequestError(f"{request['results']}: {exc}") from None
    bad = [i for i in request["items"] if not 0 <= i < len(grasps)]
    if bad:
        raise RequestError(f"item {bad[0]} is not in {request['results']} "
                           f"({len(grasps)} grasps)")
    out = Path(request["out"])
    if fault == "junk":
        atomic_write_bytes(out, b"junk: not an npz\n")
        return len(request["items"])
    columns = check(Path(request["checkout"]), request["object_code"],
                    [grasps[i] for i in request["items"]], settings)
    atomic_write(out, lambda f: np.savez(f, **columns))
    return len(request["items"])


def answer(line: str, fault: str | None) -> dict[str, Any]:
    try:
        return {"ok": True, "n": serve_one(parse(line), fault)}
    except (RequestError, ValidateError) as exc:
        return {"ok": False, "error": " ".join(str(exc).split())}
    except Exception as exc:  # a worker outlives a request it could not serve
        return {"ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}


def serve(stdin: TextIO, stdout: TextIO, fault: str | None) -> int:
    first = True
    for line in stdin:
        if not line.strip():
            continue
        if first and fault == "crash":
            return CRASH_EXIT
        if first and fault == "hang":
            while True:
                time.sleep(3600)
        stdout.write(json.dumps(answer(line, fault if first else None)) + "\n")
        first = False
        stdout.flush()
    return 0


def main() -> int:
    fault = os.environ.get(FAULT_VAR) or None
    if fault is not None and fault not in FAULTS:
        print(f"{FAULT_VAR}={fault!r}: one of {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    return serve(sys.stdin, sys.stdout, fault)


if __name__ == "__main__":
    sys.exit(main())
