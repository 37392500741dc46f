"""The manifest of an exported pipeline sampler: what a serving process needs besides the graph.

The graph maps noise and prompt embeddings to latents; the manifest says how to feed and read it
(every input's name, shape and dtype, the output), what is baked in (guidance, the schedule), where
the rest of the pipeline lives (its folder and component names: text encoders, tokenizers, VAE),
and how latents become images (the VAE's scaling and shift, Flux's 2 x 2 packing), so that a
deployment can decode the graph's output with the manifest and the VAE alone
(`ldd_fast.pipelines.unpack_latents(latents, manifest["decode"])`, then the VAE).
"""
from __future__ import annotations

import json
import os

from ldd_fast.denoiser import Denoiser
from ldd_fast.errors import InvalidArgument, InvalidArgumentType, path_like
from ldd_fast.io import atomic_write_text, read_json

from ._deps import require

FORMAT = "ldd-fast pipeline sampler manifest"
VERSION = 1


def manifest_path(onnx_path: str) -> str:
    return os.path.splitext(path_like(onnx_path, "onnx_path"))[0] + ".manifest.json"


def _value_infos(values) -> list[dict]:
    """name, shape (a str for a symbolic axis such as "batch") and dtype of graph inputs / outputs."""
    onnx = require("onnx", "the pipeline manifest")
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in t.shape.dim]
        out.append({"name": v.name, "shape": shape,
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
    return out


def _number(v):
    return None if v is None else float(v)  # Flux keeps its embedded guidance as a tensor


def write_pipeline_manifest(export, den, *, pipeline_folder: str | None = None, components=None) -> str:
    """Write `<graph>.manifest.json` beside an exported pipeline sampler (`export`: what `to_onnx` returned for
    a Denoiser from `lf.from_pipeline`); returns its path."""
    from .onnx_export import OnnxExport

    if not isinstance(export, OnnxExport):
        raise InvalidArgumentType(f"export must be what to_onnx returned (an OnnxExport), got {type(export).__name__}")
    if not isinstance(den, Denoiser):
        raise InvalidArgumentType(f"den must be an lf.Denoiser (from lf.from_pipeline), got {type(den).__name__}")
    pipeline_folder = None if pipeline_folder is None else path_like(pipeline_folder, "pipeline_folder")
    if components is not None and (not isinstance(components, (list, tuple))
                                   or not all(isinstance(c, str) for c in components)):
        raise InvalidArgumentType(f"components must be a list of component names, got {components!r:.60}")
    decoding = getattr(den, "latent_decoding", None)
    if decoding is None:
        raise InvalidArgument("the pipeline manifest describes a Denoiser from lf.from_pipeline (it has "
                              "latent_decoding); this one does not")
    onnx = require("onnx", "the pipeline manifest")
    graph = onnx.load(export.path, load_external_data=False).graph
    meta = export.metadata
    manifest = {
        "format": FORMAT, "version": VERSION,
        "graph": os.path.basename(export.path),
        "data": os.path.basename(export.data_path) if export.data_path else None,
        "inputs": _value_infos(graph.input),
        "output": {**_value_infos(graph.output)[0], "what": "latents (decode with 'decode' below)"},
        "condition": {"structure": meta.get("cond", {}) and meta["cond"].get("structure"),
                      "how": "den.encode_prompt(prompts): the pipeline's own prompt encoding, one row per sample"},
        "baked_in": {"guidance_scale": den.guidance_scale,
                     "embedded_guidance": _number(getattr(den.net, "embedded_guidance", None)),
                     "solver": meta.get("solver"), "order": meta.get("order"), "nfe": meta.get("nfe"),
                     "schedule_fingerprint": meta.get("fingerprint")},
        "pipeline": {"kind": den.pipeline_kind,
                     "folder": None if pipeline_folder is None else os.path.abspath(pipeline_folder),
                     "components": None if components is None else sorted(components),
                     "height": den.height, "width": den.width},
        "decode": {**decoding, "images": f"{decoding['vae']}.decode(latents / scaling_factor + shift_factor), "
                                         f"in [-1, 1], after unpacking"},
    }
    path = manifest_path(export.path)
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path


def read_manifest(path: str) -> dict:
    """A manifest written by write_pipeline_manifest (format and version checked)."""
    m = read_json(path_like(path, "path"), "pipeline manifest")
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
        raise InvalidArgument(f"{path}: not an ldd-fast pipeline manifest of version {VERSION}")
    return m
