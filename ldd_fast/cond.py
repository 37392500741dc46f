"""Conditions: a tensor, or a tuple / list / dict of tensors (e.g. SD3's prompt embeddings and pooled
projections), every leaf with one row per sample. Batching, guidance, teacher pairs and the exported
graph's inputs all go through these few functions, so a structured condition is handled by the same
code that handles a tensor.
"""
from __future__ import annotations

import hashlib
import json
from typing import Callable

import torch

from .errors import ConditionError


def is_cond(cond) -> bool:
    """A tensor, or a non-empty tuple / list / dict (str keys) of conditions."""
    if isinstance(cond, torch.Tensor):
        return True
    if isinstance(cond, (tuple, list)):
        return len(cond) > 0 and all(is_cond(c) for c in cond)
    if isinstance(cond, dict):
        return len(cond) > 0 and all(isinstance(k, str) and is_cond(v) for k, v in cond.items())
    return False


def leaves(cond) -> list[torch.Tensor]:
    """The tensors of a condition, in a fixed order (tuple order; dict keys sorted)."""
    if isinstance(cond, torch.Tensor):
        return [cond]
    if isinstance(cond, (tuple, list)):
        return [t for c in cond for t in leaves(c)]
    return [t for k in sorted(cond) for t in leaves(cond[k])]


def names(cond, prefix: str = "cond") -> list[str]:
    """One name per leaf (graph input names): cond, or cond_0, cond_1, ..., or cond_<key>."""
    if isinstance(cond, torch.Tensor):
        return [prefix]
    if isinstance(cond, (tuple, list)):
        return [n for i, c in enumerate(cond) for n in names(c, f"{prefix}_{i}")]
    return [n for k in sorted(cond) for n in names(cond[k], f"{prefix}_{k}")]


def structure(cond):
    """The shape of the tree without its tensors (JSON-able): "tensor", ["tuple", [...]], ["dict", {...}]."""
    if isinstance(cond, torch.Tensor):
        return "tensor"
    if isinstance(cond, (tuple, list)):
        return ["tuple" if isinstance(cond, tuple) else "list", [structure(c) for c in cond]]
    return ["dict", {k: structure(cond[k]) for k in sorted(cond)}]


def rebuild(spec, tensors: list[torch.Tensor]):
    """The inverse of (structure, leaves)."""
    it = iter(tensors)

    def build(s):
        if s == "tensor":
            return next(it)
        kind, sub = s
        if kind == "dict":
            return {k: build(v) for k, v in sub.items()}
        out = [build(v) for v in sub]
        return tuple(out) if kind == "tuple" else out

    out = build(spec)
    if next(it, None) is not None:
        raise ConditionError("more tensors than the condition's structure holds")
    return out


def map_cond(fn: Callable, *conds):
    """fn applied leaf by leaf over conditions of one structure (fn(leaf_a, leaf_b, ...))."""
    first = conds[0]
    if isinstance(first, torch.Tensor):
        return fn(*conds)
    if isinstance(first, (tuple, list)):
        out = [map_cond(fn, *parts) for parts in zip(*conds)]
        return tuple(out) if isinstance(first, tuple) else out
    return {k: map_cond(fn, *(c[k] for c in conds)) for k in first}


def batch_size(cond) -> int | None:
    """The common number of rows of the leaves, or None when they disagree or a leaf is 0-dim."""
    sizes = {t.shape[0] if t.dim() else None for t in leaves(cond)}
    return sizes.pop() if len(sizes) == 1 else None


def same_structure(a, b) -> bool:
    return structure(a) == structure(b)


def digest(cond) -> str:
    """sha256 of a condition's structure, dtypes, shapes and values (what identifies it)."""
    h = hashlib.sha256(json.dumps(structure(cond)).encode())
    for c in leaves(cond):
        h.update(f"{c.dtype}{tuple(c.shape)}".encode())
        h.update(c.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
