"""Atomic saves of the zoo's JSON, safetensors and checkpoints (through ldd_fast.io), creating folders.

A crash mid-write leaves either the old file or the new one, never a torn
file, which matters for checkpoints that ``--resume`` later trusts.
"""
from __future__ import annotations

import hashlib
import json
import os

from ..io import atomic_write, save_state

__all__ = ["atomic_write", "save_json", "save_safetensors", "save_checkpoint", "sha256_file"]


def save_json(obj, path: str) -> None:
    def _write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, _write)


def save_safetensors(tensors: dict, path: str, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_checkpoint(obj, path: str, kind: str) -> None:
    """A training checkpoint as an ldd-fast state file (no pickle: loading it cannot run code)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_state(path, kind, obj)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
