"""The gallery's cache, in the experiment folder (``gallery-cache/``, safe to delete): the
hand model's reference pose (one file per model, named by its fingerprint), and per object
its mesh at scale 1 and, per grasp, the links' motions and the picture. A grasp is named
by seed, round, item and a digest of its qpos, so a second ``report`` of a live run draws
only the grasps it has not drawn before. Every file is written atomically, and only if it
can be: a cache that cannot be written keeps what was drawn in memory (``problem``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from supervisor.gallery.meshes import Hands
from supervisor.storage.fsutil import atomic_write_bytes

CACHE_DIR = "gallery-cache"


def grasp_key(data: dict[str, np.ndarray], row: int) -> str:
    h = hashlib.sha256(np.ascontiguousarray(data["qpos_left"][row], np.float64).tobytes())
    h.update(np.ascontiguousarray(data["qpos_right"][row], np.float64).tobytes())
    return (f"s{int(data['seed'][row])}-r{int(data['round_id'][row])}-"
            f"i{int(data['item_index'][row])}-{h.hexdigest()[:8]}")


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _read_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None  # absent or torn: drawn again


def checkout_stamp(cwd: Path, command: list[str]) -> str:
    """What the cached hand model depends on: the helper's command, the checkout's
    folder and the times of its hand model's files."""
    parts = [json.dumps(command), str(cwd.resolve())]
    for rel in ("utils/hand_model.py", "utils/config.py", "mjcf"):
        try:
            parts.append(f"{rel}:{os.stat(cwd / rel).st_mtime_ns}")
        except OSError:
            parts.append(f"{rel}:-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class Cache:
    def __init__(self, experiment_dir: Path) -> None:
        self.root = experiment_dir / CACHE_DIR
        self.problem: str | None = None  # the first write that failed, in one line

    def _write(self, path: Path, payload: bytes) -> None:
        """Best effort: a cache that cannot be written (read-only, a full disk) costs the
        next report the time to draw again, never this drawing; ``problem`` says why."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, payload)
        except OSError as exc:
            if self.problem is None:
                why = exc.strerror or str(exc) or type(exc).__name__
                self.problem = (f"gallery cache not written ({why}: {exc.filename or path}): "
                                f"drawn anyway, and drawn again by the next report")

    # the hand model
    def hands_for(self, stamp: str) -> tuple[str, Hands] | None:
        try:
            known = json.loads((self.root / "hands" / "checkout.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(known, dict) or known.get("stamp") != stamp:
            return None
        arrays = _read_npz(self.root / "hands" / f"{known.get('fingerprint')}.npz")
        if arrays is None:
            return None
        try:
            return str(known["fingerprint"]), Hands.from_arrays(arrays)
        except (KeyError, ValueError):
            return None

    def put_hands(self, stamp: str, hands: Hands) -> str:
        fingerprint = hands.fingerprint()
        self._write(self.root / "hands" / f"{fingerprint}.npz", _npz_bytes(hands.arrays()))
        self._write(self.root / "hands" / "checkout.json",
                    json.dumps({"stamp": stamp, "fingerprint": fingerprint}).encode())
        return fingerprint

    # per object
    def _object(self, code: str) -> Path:
        return self.root / "objects" / code

    def mesh(self, code: str) -> tuple[np.ndarray, np.ndarray, str] | None:
        arrays = _read_npz(self._object(code) / "mesh.npz")
        if arrays is None or not {"vertices", "faces", "source"} <= set(arrays):
            return None
        return arrays["vertices"], arrays["faces"], str(arrays["source"])

    def put_mesh(self, code: str, vertices: np.ndarray, faces: np.ndarray,
                 source: str) -> None:
        self._write(self._object(code) / "mesh.npz", _npz_bytes(
            {"vertices": vertices.astype(np.float32), "faces": faces.astype(np.int32),
             "source": np.array(source)}))

    def motion(self, code: str, fingerprint: str, key: str) -> dict[str, np.ndarray] | None:
        arrays = _read_npz(self._object(code) / f"{fingerprint}-{key}.npz")
        return arrays if arrays is not None and {"left", "right"} <= set(arrays) else None

    def put_motion(self, code: str, fingerprint: str, key: str,
                   motion: dict[str, np.ndarray]) -> None:
        self._write(self._object(code) / f"{fingerprint}-{key}.npz", _npz_bytes(motion))

    def picture(self, code: str, name: str) -> bytes | None:
        try:
            png = (self._object(code) / f"{name}.png").read_bytes()
        except OSError:
            return None
        whole = png.startswith(b"\x89PNG\r\n\x1a\n") and png[-8:-4] == b"IEND"
        return png if whole else None  # torn: drawn again

    def put_picture(self, code: str, name: str, png: bytes) -> None:
        self._write(self._object(code) / f"{name}.png", png)

    def describe(self) -> dict[str, Any]:
        files = [p for p in self.root.rglob("*") if p.is_file()] if self.root.exists() else []
        return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
