"""Atomic file writes: write a temporary file in the target directory, then os.replace.

A crash mid-write leaves either the old file or the new one, never a torn
file, which matters for checkpoints that ``--resume`` later trusts.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

import torch

__all__ = ["atomic_write", "save_json", "save_safetensors", "save_torch", "sha256_file"]


def atomic_write(path: str, write_fn, suffix: str = ".tmp") -> None:
    """Call ``write_fn(tmp_path)`` and move the result onto ``path`` atomically."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write_fn(tmp)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_json(obj, path: str) -> None:
    def _write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
    atomic_write(path, _write)


def save_safetensors(tensors: dict, path: str, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_torch(obj, path: str) -> None:
    # The ".ckpt.tmp" suffix is git-ignored, so a crash never leaves a stray file to commit.
    atomic_write(path, lambda tmp: torch.save(obj, tmp), suffix=".ckpt.tmp")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
