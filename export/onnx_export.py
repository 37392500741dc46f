"""The fixed sampler as one ONNX graph: nfe network calls and the folded linear maps, no control flow.

Two ways to build the same graph:

* ``method="compose"`` (default): torch's exporter (``torch.onnx.export(dynamo=True)``)
  traces ONE network call, ``NetCall(x, t_net, cond)``; the sampler graph is then
  assembled in ONNX: nfe renamed copies of that call's nodes, all reading the same
  initializers (the weights are stored once by construction), with each call's time
  and every coefficient of the folded plan as scalar constants (or graph inputs), and
  Mul/Add nodes for the linear maps. Export time does not grow with nfe: tracing the
  unrolled module costs about nfe times one call (measured 74 s vs 6 s for a 16-channel
  TinyUNet at nfe 5, one core) and the exporter's optimiser grows with the node count.
* ``method="trace"``: ``torch.onnx.export`` of the `UnrolledSampler` module itself (the
  slow twin, kept to check the assembly against torch's own unrolling).

Both produce the same inputs (``z``; ``cond`` for conditional graphs; ``coef``,
``init_scale``, ``t_net`` with ``schedule_as_input``) and output (``sample``), and carry
the sampler's description (solver, schedule, structure, model fingerprint) as
metadata under the key "ldd_fast".

Files: the graph ``path`` and one data file of weights next to it, named
``<name>.<content digest>.data``. The pair is written atomically: both are written and
checked in a temporary folder beside the target, the data file is moved into place,
then the graph file (which names its data file) replaces the old one; readers see the
old pair or the new pair, never a mix. The previous artifact's data file is removed.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass, field

import torch

from ldd_fast._version import __version__
from ldd_fast.cond import digest, leaves, map_cond, names as cond_input_names, structure
from ldd_fast.denoiser import Denoiser, check_state
from ldd_fast.errors import InvalidArgument, InvalidArgumentType, LddFastError, boolean, string
from ldd_fast.io import check_output_path, locked_temp
from ldd_fast.sample import plan_for, sampler_options

from ._deps import require
from .unroll import STATE_DTYPE, schedule_tensors, structure_of, table_shape, unroll

METADATA_KEY = "ldd_fast"
FORMAT_VERSION = 2  # 2: the data file's size and sha256 are recorded (version-1 graphs load without that check)
READ_VERSIONS = (1, 2)
# Data files up to this size are re-hashed on every load (~0.1 s); larger ones only with verify=True.
HASH_ON_LOAD_BYTES = 128 << 20
CONTROL_FLOW_OPS = ("Loop", "If", "Scan")
METHODS = ("compose", "trace")
MIN_OPSET = 18  # torch's dynamo exporter emits opset >= 18
# Tensors under this size stay inside the graph file (onnx's own default threshold).
EXTERNAL_THRESHOLD = 1024
_PREFIX = "ldd_fast::"

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}

# The traced network call, per network, for exports that differ only in solver / schedule / options:
# torch's exporter spends ~3 s on even a 19-node network (export, decompositions, translation,
# optimisation; torch 2.13, one core), the assembly milliseconds. One entry per network, dropped
# with the network, and only for graphs under _CACHE_MAX_BYTES of weights.
_NET_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CACHE_MAX_BYTES = 256 << 20


class ExportError(LddFastError, RuntimeError):
    """The graph could not be exported as asked, or failed a structural check (the message says which)."""


@dataclass
class OnnxExport:
    """What `to_onnx` wrote, with the figures its checks used."""
    path: str
    data_path: str | None
    nfe: int
    inputs: list[str]
    conditional: bool
    schedule_as_input: bool
    dtype: str
    network_bytes: int       # bytes of one copy of the network's weights (parameters and float buffers)
    initializer_bytes: int   # bytes of all initializers of the exported graph
    file_bytes: int          # graph file + data file
    op_counts: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        return [self.path] + ([self.data_path] if self.data_path else [])


def _resolve(den_or_sampler, solver, order, options):
    """A Denoiser, or an lf.Sampler (its `.den`, and its plan's solver, order and options as defaults)."""
    if isinstance(den_or_sampler, Denoiser):
        return den_or_sampler, solver, order, options
    den = getattr(den_or_sampler, "den", None)
    plan = getattr(den_or_sampler, "plan", None)
    if not isinstance(den, Denoiser) or plan is None:
        raise InvalidArgumentType(f"expected an lf.Denoiser or an lf.Sampler, got {type(den_or_sampler).__name__}")
    solver = solver or plan.solver
    order = order or plan.order
    for key in ("lower_order_final", "variant"):
        if key not in options and plan.options.get(key) is not None:
            options = {**options, key: plan.options[key]}
    return den, solver, order, options


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def network_bytes(den: Denoiser) -> int:
    """Bytes of one copy of the network's weights: parameters and floating-point buffers."""
    net = den.net
    if not isinstance(net, torch.nn.Module):
        return 0
    tensors = list(net.parameters()) + [b for b in net.buffers() if b.is_floating_point()]
    unique = {t.data_ptr(): t for t in tensors}.values()  # tied weights count once
    return sum(t.numel() * t.element_size() for t in unique)


def _example_batch(z: torch.Tensor, cond, dynamic_batch: bool):
    # torch.export specialises a dimension whose example size is 0 or 1; trace with 2.
    if dynamic_batch and z.shape[0] == 1:
        z = z.expand(2, *z.shape[1:]).contiguous()
        cond = None if cond is None else map_cond(lambda c: c.expand(2, *c.shape[1:]).contiguous(), cond)
    return z, cond


def _net_key(den: Denoiser, mod, z, cond, dynamic: bool, opset):
    """What the traced network call depends on (not the schedule: times are inputs of the call)."""
    net = den.net
    if not isinstance(net, torch.nn.Module):
        return None
    try:
        weakref.ref(net)
    except TypeError:
        return None
    tensors = list(net.parameters()) + list(net.buffers())
    # In-place updates (optimiser steps, load_state_dict) bump _version; new tensors change id / data_ptr.
    weights = tuple((id(t), t._version, t.data_ptr(), t.dtype, str(t.device)) for t in tensors)
    null = None if den.null_cond is None else digest(den.null_cond)
    return (weights, mod.net_call.guided, null, str(mod.net_dtype), tuple(z.shape[1:]),
            None if dynamic else z.shape[0],
            None if cond is None else (str(structure(cond)), tuple((str(c.dtype), tuple(c.shape[1:]))
                                                                   for c in leaves(cond))),
            dynamic, opset)


def _torch_export(module, args, names, dynamic, output_names, opset):
    """torch.onnx.export (dynamo) -> ModelProto with local functions inlined; checks the batch stayed dynamic."""
    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    dynamic_shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1)
        # One spec per positional input, in order: z / x / cond carry the batch. torch.export sees a
        # forward(z, *args) as two inputs, z and the tuple args, and wants the specs nested alike.
        specs = [{0: batch} if n in ("z", "x") or n.startswith("cond") else None for n in names]
        params = list(inspect.signature(module.forward).parameters.values())
        fixed = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if any(p.kind == p.VAR_POSITIONAL for p in params) and len(specs) > len(fixed):
            dynamic_shapes = tuple(specs[:len(fixed)]) + (tuple(specs[len(fixed):]),)
        else:
            dynamic_shapes = tuple(specs)
    # Known-benign exporter chatter (torch 2.13): torchvision ops it cannot register, a pytree
    # deprecation inside torch, and the note that z and cond share the batch dimension.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*The axis name.*", category=UserWarning)
            prog = torch.onnx.export(module, tuple(args), dynamo=True, input_names=list(names),
                                     output_names=list(output_names), dynamic_shapes=dynamic_shapes,
                                     opset_version=opset, verbose=False, report=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types; name the step and keep the cause
        raise ExportError(f"torch.onnx.export failed while tracing the {type(module).__name__}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        registration.setLevel(level)
    proto = prog.model_proto
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    if dynamic:
        first = proto.graph.input[0].type.tensor_type.shape.dim[0]
        if not first.dim_param:
            raise ExportError(f"torch's exporter fixed the batch dimension to {first.dim_value} instead of keeping "
                              f"it dynamic (the network guards on the batch size); export with dynamic_batch=False")
    return proto


def _set_batch_name(value_info, name: str = "batch") -> None:
    dims = value_info.type.tensor_type.shape.dim
    if dims and dims[0].dim_param:
        dims[0].dim_param = name


def _check_no_subgraphs(graph) -> None:
    onnx = require("onnx", "ONNX export")
    for node in graph.node:
        if node.op_type in CONTROL_FLOW_OPS or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                   for a in node.attribute):
            raise ExportError(f"the network exports with control flow (a {node.op_type} node, {node.name!r}); an "
                              f"unrolled sampler must be straight-line code. Remove data-dependent branches from "
                              f"the network's forward")


def _compose(net, folded, tensors, *, cond_names: list[str], schedule_as_input: bool):
    """Assemble the sampler graph from one exported network call (see the module docstring)."""
    onnx = require("onnx", "ONNX export")
    from onnx import TensorProto, helper, numpy_helper

    g = net.graph
    _check_no_subgraphs(g)
    x_name, t_name = g.input[0].name, g.input[1].name
    traced_cond = [i.name for i in g.input[2:2 + len(cond_names)]]
    raw_names = [o.name for o in g.output]
    if len(raw_names) != folded.n_raw:
        raise ExportError(f"the network call exported {len(raw_names)} outputs, the plan reads {folded.n_raw}")
    initializers = list(g.initializer)
    body = []
    for node in g.node:
        # Hoist constant tensors into shared initializers so that calls do not copy them.
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            initializers.append(t)
        else:
            body.append(node)
    shared = {t.name for t in initializers}
    if any(n.startswith(_PREFIX) for n in shared | {x_name, t_name}):
        raise ExportError(f"the network graph uses the reserved name prefix {_PREFIX!r}")

    nodes, extra = [], []
    counter = Counter()

    def fresh(kind: str) -> str:
        counter[kind] += 1
        return f"{_PREFIX}{kind}{counter[kind]}"

    def scalar(value: float, kind: str) -> str:
        name = fresh(kind)
        extra.append(numpy_helper.from_array(torch.tensor(value, dtype=torch.float32).numpy(), name))
        return name

    def index(i: int) -> str:
        name = fresh("index")
        extra.append(numpy_helper.from_array(torch.tensor(i, dtype=torch.int64).numpy(), name))
        return name

    def op(op_type: str, inputs: list[str], kind: str) -> str:
        out = fresh(kind)
        nodes.append(helper.make_node(op_type, inputs, [out], name=out))
        return out

    if schedule_as_input:
        flat_shape = fresh("shape")
        extra.append(numpy_helper.from_array(torch.tensor([-1], dtype=torch.int64).numpy(), flat_shape))
        coef_flat = op("Reshape", ["coef", flat_shape], "coef_flat")
        _, rows, cols = table_shape(folded)

        def coef(i, k, j):
            return op("Gather", [coef_flat, index((i * rows + k) * cols + j)], "c")

        def init(r):
            return op("Gather", ["init_scale", index(r)], "init")

        def t_of(i):
            return op("Gather", ["t_net", index(i)], "t")
    else:
        def coef(i, k, j):
            return scalar(float(tensors["coef"][i, k, j]), "c")

        def init(r):
            return scalar(float(tensors["init_scale"][r]), "init")

        def t_of(i):
            return scalar(float(tensors["t_net"][i]), "t")

    regs = [op("Mul", [init(r), "z"], "reg") for r in range(len(folded.init_registers))]
    for i, step in enumerate(folded.steps):
        prefix = f"{_PREFIX}call{i}/"
        mapping = {x_name: regs[step.input], t_name: t_of(i)}
        mapping.update(zip(traced_cond, cond_names))

        def rename(name, prefix=prefix, mapping=mapping):
            if name == "" or name in shared:
                return name
            return mapping.get(name, prefix + name)

        for node in body:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.ClearField("metadata_props")  # exporter debug info (stack traces): ~1.5 kB per node
            new.doc_string = ""
            new.name = prefix + (node.name or node.output[0])
            del new.input[:]
            new.input.extend(rename(n) for n in node.input)
            del new.output[:]
            new.output.extend(rename(n) for n in node.output)
            nodes.append(new)
        src = regs + [rename(r) for r in raw_names]
        new_regs = []
        for k, sources in enumerate(step.sources):
            c0 = float(tensors["coef"][i, k, sources[0]])
            if len(sources) == 1 and not schedule_as_input and c0 == 1.0:
                new_regs.append(src[sources[0]])  # a plain copy: no node
                continue
            out = op("Mul", [coef(i, k, sources[0]), src[sources[0]]], "term")
            for j in sources[1:]:
                out = op("Add", [out, op("Mul", [coef(i, k, j), src[j]], "term")], "reg")
            new_regs.append(out)
        regs = new_regs
    nodes.append(helper.make_node("Identity", [regs[0]], ["sample"], name=f"{_PREFIX}sample"))

    z_in = onnx.ValueInfoProto()
    z_in.CopyFrom(g.input[0])
    z_in.name = "z"
    _set_batch_name(z_in)
    inputs = [z_in]
    for k, name in enumerate(cond_names):
        c_in = onnx.ValueInfoProto()
        c_in.CopyFrom(g.input[2 + k])
        c_in.name = name
        _set_batch_name(c_in)
        inputs.append(c_in)
    if schedule_as_input:
        inputs += [helper.make_tensor_value_info("coef", TensorProto.FLOAT, list(table_shape(folded))),
                   helper.make_tensor_value_info("init_scale", TensorProto.FLOAT, [len(folded.init_registers)]),
                   helper.make_tensor_value_info("t_net", TensorProto.FLOAT, [folded.nfe])]
    out = onnx.ValueInfoProto()
    out.CopyFrom(z_in)
    out.name = "sample"
    graph = helper.make_graph(nodes, "ldd_fast_sampler", inputs, [out], initializer=initializers + extra)
    model = helper.make_model(graph, opset_imports=list(net.opset_import), producer_name="ldd_fast",
                              producer_version=__version__)
    model.ir_version = net.ir_version
    return model


def _tensor_bytes(t) -> int:
    from onnx import helper
    if t.HasField("raw_data"):
        return len(t.raw_data)
    n = 1
    for d in t.dims:
        n *= d
    return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _save_pair(model, path: str, meta: dict) -> tuple[str, str | None]:
    """Write graph + content-addressed data file atomically (see the module docstring).

    The data file's size and sha256 go into the graph's metadata (`meta["data_file"]`), so a
    loader can tell a truncated or replaced data file from the one exported with this graph.
    """
    onnx = require("onnx", "ONNX export")
    from onnx import external_data_helper, helper, numpy_helper

    folder, base = os.path.dirname(path), os.path.basename(path)
    old_data = _data_files(path) if os.path.isfile(path) else []
    data_name = None
    with locked_temp(path, directory=True) as tmpdir:
        tmp_data = os.path.join(tmpdir, "weights.data")
        digest, placed = hashlib.sha256(), []
        with open(tmp_data, "wb") as f:
            offset = 0
            for t in model.graph.initializer:
                if _tensor_bytes(t) < EXTERNAL_THRESHOLD:
                    continue
                raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
                # Page-align large tensors (as onnx does) so that runtimes can map them directly.
                align = 4096 if len(raw) >= 1 << 20 else 64
                pad = b"\0" * ((-offset) % align)
                f.write(pad)
                digest.update(pad)
                offset += len(pad)
                f.write(raw)
                digest.update(raw)
                placed.append((t, offset, len(raw)))
                offset += len(raw)
            f.flush()
            os.fsync(f.fileno())
        meta = dict(meta, data_file=None)
        if placed:
            data_name = f"{base}.{digest.hexdigest()[:12]}.data"
            meta["data_file"] = {"name": data_name, "bytes": offset, "sha256": digest.hexdigest()}
        helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
        for t, off, length in placed:
            if not t.HasField("raw_data"):
                raw = numpy_helper.to_array(t).tobytes()
                for fld in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    t.ClearField(fld)
                t.raw_data = raw
            external_data_helper.set_external_data(t, data_name, off, length)
            t.data_location = onnx.TensorProto.EXTERNAL
            t.ClearField("raw_data")
        tmp_graph = os.path.join(tmpdir, base)
        with open(tmp_graph, "wb") as f:
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        if placed:
            os.replace(tmp_data, os.path.join(tmpdir, data_name))
        # Resolves the data file next to the graph, as runtimes do; full_check runs strict type and
        # shape inference, so a network mixing dtypes fails here rather than in the runtime.
        try:
            onnx.checker.check_model(tmp_graph, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ExportError(f"the exported graph is not valid ONNX: {str(e).splitlines()[0]}") from e
        placed_new = False
        try:
            if placed:
                target = os.path.join(folder, data_name)
                placed_new = not os.path.exists(target)
                os.replace(os.path.join(tmpdir, data_name), target)
            os.replace(tmp_graph, path)
        except BaseException:
            # The graph was not replaced: the old graph (if any) still names its own data file.
            if placed_new and data_name not in old_data:
                os.unlink(os.path.join(folder, data_name))
            raise
    for name in old_data:
        if name != data_name and os.path.isfile(os.path.join(folder, name)):
            os.unlink(os.path.join(folder, name))
    return path, (os.path.join(folder, data_name) if data_name else None), meta


def _data_files(path: str) -> list[str]:
    """Names of the external data files a graph file refers to (relative to its folder)."""
    onnx = require("onnx", "ONNX export")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable old file simply has no data files to clean up
        return []
    names = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            names |= {e.value for e in t.external_data if e.key == "location"}
    return sorted(n for n in names if os.path.basename(n) == n)  # never follow a path out of the folder


def artifact_files(path) -> list[str]:
    """The files of an exported sampler: the graph and the data file(s) it names (copy them together)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX file not found: {path}")
    return [path] + [os.path.join(os.path.dirname(path), n) for n in _data_files(path)]


def read_metadata(path) -> dict:
    """The sampler description stored in an exported graph (without loading its weights)."""
    onnx = require("onnx", "reading an exported sampler")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{path} is not a readable ONNX file ({type(e).__name__}: {e})") from None
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                meta = json.loads(prop.value)
            except ValueError as e:
                raise ExportError(f"{path}: its '{METADATA_KEY}' metadata is not valid JSON ({e})") from None
            if not isinstance(meta, dict) or meta.get("format_version") not in READ_VERSIONS:
                version = meta.get("format_version") if isinstance(meta, dict) else None
                raise ExportError(f"{path}: sampler metadata version {version!r}; this ldd-fast reads "
                                  f"{READ_VERSIONS}")
            return meta
    raise ExportError(f"{path} has no '{METADATA_KEY}' metadata: it was not written by ldd_fast.export.to_onnx")


def verify_data_file(path, meta: dict, *, full: bool = False) -> None:
    """Check the data file beside an exported graph against what the export recorded: its size always,
    its sha256 when it is under HASH_ON_LOAD_BYTES or when full=True. An ExportError names the file."""
    record = meta.get("data_file")
    if record is None:
        return  # a version-1 graph (no record), or a graph small enough to hold its weights itself
    data = os.path.join(os.path.dirname(os.path.abspath(os.fspath(path))), os.path.basename(str(record["name"])))
    if not os.path.isfile(data):
        raise ExportError(f"the data file of {path} is missing: {data} (copy the graph and its data file together: "
                          f"artifact_files(path))")
    size = os.path.getsize(data)
    if size != record["bytes"]:
        raise ExportError(f"the data file {data} has {size} bytes, but {path} was exported with {record['bytes']}: "
                          f"truncated or replaced; export again")
    if full or size <= HASH_ON_LOAD_BYTES:
        h = hashlib.sha256()
        with open(data, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        if h.hexdigest() != record["sha256"]:
            raise ExportError(f"the data file {data} does not hold the weights {path} was exported with (sha256 "
                              f"differs): corrupt or replaced; export again")


def op_counts(model) -> dict[str, int]:
    """Node counts per op type, local functions inlined."""
    onnx = require("onnx", "ONNX export")
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    return dict(Counter(n.op_type for n in model.graph.node))


def to_onnx(den_or_sampler, schedule, path, example_z: torch.Tensor, *, solver: str | None = None,
            order: int | None = None, cond=None, dynamic_batch: bool = True,
            dtype: torch.dtype | None = None, opset: int | None = None, schedule_as_input: bool = False,
            method: str = "compose", force: bool = False, **options) -> OnnxExport:
    """Export the fixed sampler (nfe network calls + baked linear maps) as one ONNX graph.

    Args:
        den_or_sampler: an lf.Denoiser (or an object carrying one as `.den`, e.g. lf.Sampler).
        schedule: the lf.Schedule; all compatibility checks of `lf.plan_for` apply (a schedule made
            for another model raises IncompatibleSchedule unless force=True).
        path: the graph file to write; its data file is written beside it.
        example_z: noise of the sample's shape [B, ...]; fixes the dtype-independent sample shape.
        cond: an example condition [B, ...] (required when the Denoiser guides); makes `cond` a graph input.
            A structured condition (a tuple / dict of tensors, e.g. SD3's prompt embeddings and pooled
            projections) becomes one input per tensor: cond_0, cond_1, ... or cond_<key>.
        dynamic_batch: the batch dimension of z / cond / sample is symbolic ("batch").
        dtype: the network's dtype in the graph (default: its own); z, sample and the linear maps
            stay float32 (see export/unroll.py). torch.float16 is the fp16 export.
        opset: ONNX opset (default: torch's exporter default; at least 18).
        schedule_as_input: coefficients and network times become inputs `coef`, `init_scale`,
            `t_net`, so a schedule with the same structure can be swapped in without re-exporting.
        method: "compose" (trace one call, assemble; default) or "trace" (trace the unrolled module).
        options: lower_order_final, variant, final (as for lf.sample).
    """
    den, solver, order, options = _resolve(den_or_sampler, solver, order, options)
    options = sampler_options(options)
    # Every argument before a file is touched or the exporter imported.
    if not isinstance(example_z, torch.Tensor):
        raise InvalidArgumentType(f"example_z must be a tensor of noise [B, ...], got {type(example_z).__name__}")
    check_state(example_z)
    string(method, "method")
    if method not in METHODS:
        raise InvalidArgument(f"method must be one of {METHODS}, got {method!r}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET):
        error = InvalidArgument if isinstance(opset, int) and not isinstance(opset, bool) else InvalidArgumentType
        raise error(f"opset must be an int >= {MIN_OPSET} (torch's ONNX exporter), got {opset!r:.40}")
    if not isinstance(dynamic_batch, bool):
        raise InvalidArgumentType(f"dynamic_batch must be a bool, got {type(dynamic_batch).__name__}")
    boolean(schedule_as_input, "schedule_as_input")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise InvalidArgumentType(f"dtype must be a torch dtype or None, got {type(dtype).__name__}")
    if cond is not None:
        den.check_cond(cond, example_z.shape[0])
    plan_for(den, schedule, solver=solver, order=order, force=force, **options)
    path = check_output_path(path, "ONNX")
    if den.guidance_scale != 1.0 and cond is None:
        raise InvalidArgument(f"the Denoiser guides (guidance_scale={den.guidance_scale}): pass an example cond "
                              f"(one condition per sample) so that the graph gets a `cond` input")
    require("onnx", "ONNX export")
    fingerprint = den.fingerprint()
    cond_spec = "tensor" if cond is None else structure(cond)
    cond_names = [] if cond is None else cond_input_names(cond)
    mod = unroll(den, schedule, solver=solver, order=order, conditional=cond is not None, dtype=dtype,
                 schedule_as_input=schedule_as_input, force=force, cond_spec=cond_spec, **options)
    plan, folded = mod.plan, mod.folded
    tensors = schedule_tensors(folded)
    z, c = _example_batch(example_z.detach().to(STATE_DTYPE),
                          None if cond is None else map_cond(torch.Tensor.detach, cond), dynamic_batch)
    c_leaves = [] if c is None else leaves(c)
    # Export in eval mode (dropout off), leaving the caller's modules as they were.
    was_training = [(m, m.training) for m in mod.modules()]
    mod.eval()
    try:
        if method == "compose":
            names = ["x", "t_net"] + cond_names
            args = [z, tensors["t_net"][0]] + c_leaves
            key = _net_key(den, mod, z, c, dynamic_batch, opset)
            cached = _NET_CACHE.get(den.net, {}).get(key) if key is not None else None
            net = cached if cached is not None else _torch_export(
                mod.net_call, args, names, dynamic_batch, [f"raw{k}" for k in range(folded.n_raw)], opset)
            if cached is None and key is not None and network_bytes(mod.net_call.den) <= _CACHE_MAX_BYTES:
                _NET_CACHE[den.net] = {key: net}
            model = _compose(net, folded, tensors, cond_names=cond_names, schedule_as_input=schedule_as_input)
        else:
            names = ["z"] + cond_names
            args = [z] + c_leaves
            if schedule_as_input:
                names += ["coef", "init_scale", "t_net"]
                args += [tensors["coef"], tensors["init_scale"], tensors["t_net"]]
            model = _torch_export(mod, args, names, dynamic_batch, ["sample"], opset)
            for v in list(model.graph.input) + list(model.graph.output):
                _set_batch_name(v)
            for node in model.graph.node:
                node.ClearField("metadata_props")
                node.doc_string = ""
    finally:
        for m, flag in was_training:
            m.training = flag

    counts = op_counts(model)
    bad = {k: v for k, v in counts.items() if k in CONTROL_FLOW_OPS}
    if bad:
        raise ExportError(f"the exported graph contains control flow {bad}; the unrolled sampler must be "
                          f"straight-line code")
    init_bytes = sum(_tensor_bytes(t) for t in model.graph.initializer)
    net_bytes = network_bytes(mod.net_call.den)
    # One copy of the weights plus constants and coefficient tables; a second copy would double it.
    if net_bytes and init_bytes > 1.5 * net_bytes + (1 << 20):
        raise ExportError(f"the graph's initializers hold {init_bytes} bytes for {net_bytes} bytes of network "
                          f"weights: the weights were duplicated per call")
    net_dtype = mod.net_dtype
    meta = {
        "format_version": FORMAT_VERSION,
        "ldd_fast": __version__, "torch": torch.__version__, "method": method,
        "solver": plan.solver, "order": plan.order, "options": dict(plan.options), "nfe": plan.nfe,
        "noise": den.noise.describe(), "prediction": den.prediction, "guidance_scale": den.guidance_scale,
        "fingerprint": fingerprint, "schedule": schedule.to_dict(), "forced": bool(force),
        "conditional": c is not None, "schedule_as_input": schedule_as_input,
        "dtype": _DTYPE_NAMES.get(net_dtype, str(net_dtype)), "state_dtype": "float32",
        "sample_shape": list(example_z.shape[1:]), "dynamic_batch": dynamic_batch,
        "cond_dtype": None if c is None else _dtype_name(c_leaves[0].dtype),
        "cond_shape": None if c is None else list(c_leaves[0].shape[1:]),
        "cond": None if c is None else {"structure": cond_spec, "names": cond_names,
                                        "dtypes": [_dtype_name(t.dtype) for t in c_leaves],
                                        "shapes": [list(t.shape[1:]) for t in c_leaves]},
        "num_classes": den.num_classes if c is not None else None,
        "structure": structure_of(folded), "structure_hash": mod.structure_hash,
        "table_shape": list(table_shape(folded)),
        "tables": {k: v.tolist() for k, v in tensors.items()} if schedule_as_input else None,
    }
    graph_path, data_path, meta = _save_pair(model, path, meta)
    size = os.path.getsize(graph_path) + (os.path.getsize(data_path) if data_path else 0)
    return OnnxExport(graph_path, data_path, plan.nfe, [i.name for i in model.graph.input], c is not None,
                      schedule_as_input, meta["dtype"], net_bytes, init_bytes, size, counts, meta)


__all__ = ["to_onnx", "OnnxExport", "ExportError", "read_metadata", "verify_data_file", "artifact_files",
           "op_counts", "network_bytes"]
