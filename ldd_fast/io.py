"""Atomic file writes: a temp file in the target's folder, fsync, then one rename over the target.

A reader sees the old file or the new one, never a partial write; an interrupted write leaves
no stray file behind.
"""
from __future__ import annotations

import os
import tempfile


def atomic_write(path, write_fn, *, suffix: str = ".tmp") -> None:
    """Call write_fn(tmp_path), then move the result onto `path`. The folder must exist."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write_fn(tmp)
        umask = os.umask(0)  # mkstemp makes 0600 files; give the result what a plain open() would
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, write)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path) -> None:
    import torch

    # The ".ckpt.tmp" suffix is git-ignored, so a crash never leaves a file to commit by mistake.
    atomic_write(path, lambda tmp: torch.save(obj, tmp), suffix=".ckpt.tmp")
