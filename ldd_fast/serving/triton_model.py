"""ldd-fast's Triton Python-backend model: serves the fixed sampler of one repository version.

ldd_fast.serving.write_repository copies this file verbatim to <repository>/<name>/<version>/model.py;
ldd-fast never imports it (it needs Triton's `triton_python_backend_utils`). It loads everything from its
version folder (sampler.json says what: the exported graph, or a built-in model name / a copied diffusers
folder, and schedule.json) and uses ldd-fast's API (`ldd_fast`, `ldd_fast.export`, and
`ldd_fast.serving.instance`: what both Python-backend models do alike).

Requests (every input optional in config.pbtxt; the first dimension is the request's batch B):
    z         FP32  [B, C, H, W]  unit-normal noise; the response is lf.sample(den, z, schedule)
    seed      INT64 [B, 1]        instead of z: row i's noise is made from seed i as `ldd-fast sample
                                  --seed s -n 1` makes it (torch.randn on a CPU generator seeded with s)
    cond      INT64 [B, 1]        class labels (conditional repositories only); without it a row gets the
                                  model's null label (unconditional), and a guided model requires it
    cond_...  [B, ...]            instead, for a model conditioned on tensors (prompt embeddings): one input
                                  per tensor (sampler.json's "condition"), each required, one row per sample
    guidance  FP32  [B, 1]        optional; must equal the repository's guidance, which is baked in
Response: x0 FP32 [B, C, H, W]. A request that cannot be served as sent (z and seed together, neither, a
wrong shape or dtype, NaN / inf noise, a label out of range, another guidance, a negative seed) gets an
INVALID_ARG error (HTTP 400) naming the problem; a failure of the sampler itself gets INTERNAL. Either way
the model keeps running and the other requests of the same call are answered.

The well-formed requests of one `execute` call run as one sampler call (their rows concatenated, the
result split back). If that call fails, each request is run alone, so a failure stays with its request.
"""
import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

import ldd_fast as lf
from ldd_fast.cond import rebuild
from ldd_fast.serving.instance import SAMPLER_FILE, RequestError, instance_device, parse_requests, read_spec

FORMAT = ("ldd-fast triton sampler", 1)
DIFFUSERS_NETWORKS = ("UNet2DModel", "UNet2DConditionModel")



class TritonPythonModel:
    def initialize(self, args):
        folder, spec = read_spec(args, FORMAT)
        self.shape = tuple(spec["sample_shape"])
        self.guidance = float(spec["guidance"])
        self.conditional = bool(spec["conditional"])
        self.num_classes = spec["num_classes"]
        self.null_label = spec["null_label"]
        self.condition = spec.get("condition")  # tensors (one input each) instead of class labels
        self.max_batch = int(spec["max_batch"])
        threads = spec.get("threads")
        self.device = instance_device(args, threads)
        if spec["backend"] == "onnxruntime":
            from ldd_fast.export import OnnxSampler

            self.runner = OnnxSampler(os.path.join(folder, spec["graph"]), threads=threads or None)
            self.den = self.schedule = None
        elif spec["backend"] == "tensorrt":
            from ldd_fast.export import TensorRTSampler

            self.runner = TensorRTSampler(os.path.join(folder, spec["engine"]), device=self.device)
            self.den = self.schedule = None
        else:
            self.den = self._load_model(folder, spec)
            self.schedule = lf.Schedule.load(os.path.join(folder, spec["schedule"]))
            self.sample_kwargs = dict(solver=spec["solver"], order=spec["order"], force=spec["force"],
                                      **spec["options"])
            self.runner = None

    def _load_model(self, folder, spec):
        source = spec["model"]
        if "builtin" in source:  # the weights copied into the version folder (older repositories: the package's)
            weights = os.path.join(folder, source["weights"]) if source.get("weights") else None
            den = lf.zoo.load(source["builtin"], guidance_scale=spec["guidance"], folder=weights)
        else:
            import diffusers

            cls_name = source["class"]
            if cls_name not in DIFFUSERS_NETWORKS:  # never getattr an arbitrary name of the package
                raise lf.StateFileError(f"{SAMPLER_FILE}: unknown network class {cls_name!r}")
            path = os.path.join(folder, source["diffusers"])
            # safetensors only, nothing fetched: a pickled checkpoint could run code while loading.
            unet = getattr(diffusers, cls_name).from_pretrained(os.path.join(path, "unet"), local_files_only=True,
                                                                use_safetensors=True, low_cpu_mem_usage=False)
            with open(os.path.join(path, "scheduler", "scheduler_config.json"), encoding="utf-8") as f:
                den = lf.from_diffusers(unet.eval(), json.load(f))
        # The model reloaded here must be the one the repository was written for (weights upgraded since?).
        if den.fingerprint() != spec["fingerprint"] or den.guidance_scale != spec["guidance"]:
            raise lf.StateFileError(f"the model loaded from {source} is not the one this repository was written "
                                    f"for (fingerprint {den.fingerprint()[:12]}... vs {spec['fingerprint'][:12]}...): "
                                    f"rewrite the repository")
        return den.to(self.device)

    def finalize(self):
        self.runner = self.den = self.schedule = None

    # ----- requests -----------------------------------------------------------------------------

    def execute(self, requests):
        responses, parsed = parse_requests(requests, self._parse, _error)  # parsed: (index, *what _parse gave)
        if parsed:
            for (i, _, _), response in zip(parsed, self._answer(parsed)):
                responses[i] = response
        return responses

    def _answer(self, parsed):
        """One sampler call for all parsed requests; if it fails, each request alone (see the module docstring)."""
        try:
            return self._batched(parsed)
        except Exception as e:  # noqa: BLE001 - the model's or the sampler's failure, answered, not raised
            if len(parsed) == 1:
                return [_error(f"the sampler failed: {type(e).__name__}: {e}", "INTERNAL")]
            return [self._answer([p])[0] for p in parsed]

    def _batched(self, parsed):
        z = torch.from_numpy(np.concatenate([p[1] for p in parsed])).to(self.device)
        labels = [p[2] for p in parsed]
        cond = None
        if self.condition:  # each request's tensors, concatenated input by input, in the condition's structure
            cond = rebuild(self.condition["structure"], [torch.from_numpy(np.concatenate(leaf)).to(self.device)
                                                         for leaf in zip(*labels)])
        elif self.conditional and (any(c is not None for c in labels) or self.runner is not None):
            # A row without cond gets the null label, unless no row has one and the sampler takes None (eager):
            # then the call is exactly lf.sample(den, z, schedule). An exported conditional graph always takes cond.
            cond = torch.from_numpy(np.concatenate([
                c if c is not None else np.full(p[1].shape[0], self.null_label, dtype=np.int64)
                for p, c in zip(parsed, labels)])).to(self.device)
        with torch.no_grad():
            if self.runner is not None:
                x = self.runner(z, cond)
            else:
                x = lf.sample(self.den, z, self.schedule, cond=cond, **self.sample_kwargs)
        x = x.detach().to("cpu", torch.float32).numpy()
        out, start = [], 0
        for p in parsed:
            rows = p[1].shape[0]
            out.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("x0", np.ascontiguousarray(x[start:start + rows]))]))
            start += rows
        return out

    def _parse(self, request):
        """(z, labels or the condition's tensors) of one request, or a RequestError naming what is wrong."""
        z, seed, cond, guidance = (_get(request, n) for n in ("z", "seed", "cond", "guidance"))
        shape = "[B, " + ", ".join(map(str, self.shape)) + "]"
        if z is not None and seed is not None:
            raise RequestError("send z or seed, not both: z is the noise itself and seed would make other noise")
        if z is None and seed is None:
            raise RequestError(f"send z (FP32 noise {shape}) or seed (INT64 [B, 1])")
        if z is not None:
            if z.dtype != np.float32:
                raise RequestError(f"z must be FP32, got {z.dtype}")
            if z.ndim != len(self.shape) + 1 or tuple(z.shape[1:]) != self.shape or z.shape[0] < 1:
                raise RequestError(f"z has shape {list(z.shape)}; this model takes {shape}")
            if not np.isfinite(z).all():
                raise RequestError("z holds NaN or inf: the noise must be finite")
        else:
            seeds = _rows(seed, "seed", None, np.integer)
            if (seeds < 0).any():
                raise RequestError(f"seed {int(seeds[seeds < 0][0])} is negative: seeds are 0 .. 2**63 - 1")
            # noise_for(1, shape, s) of ldd-fast sample --seed s, one row at a time.
            z = np.concatenate([torch.randn((1, *self.shape), generator=torch.Generator().manual_seed(int(s)))
                                .numpy() for s in seeds])
        rows = z.shape[0]
        if rows > self.max_batch:
            raise RequestError(f"{rows} samples in one request; this model takes at most {self.max_batch}")
        labels = None
        if self.condition:
            if cond is not None:
                raise RequestError("this model's condition is tensors, not class labels: send " +
                                   ", ".join(i["name"] for i in self.condition["inputs"]))
            labels = [self._tensor(request, spec, rows) for spec in self.condition["inputs"]]
        elif cond is not None:
            if not self.conditional:
                raise RequestError("cond was sent, but this model takes no condition")
            labels = _rows(cond, "cond", rows, np.integer)
            if self.num_classes is not None and ((labels < 0) | (labels >= self.num_classes)).any():
                bad = int(labels[(labels < 0) | (labels >= self.num_classes)][0])
                raise RequestError(f"cond holds class label {bad}, outside this model's labels "
                                   f"0..{self.num_classes - 1}")
        elif self.conditional and not self.condition and (self.guidance != 1.0 or self.null_label is None):
            why = f"it guides (guidance {self.guidance:g})" if self.guidance != 1.0 else "it has no null label"
            raise RequestError(f"this model needs cond (INT64 class labels [B, 1]): {why}")
        if guidance is not None:
            values = _rows(guidance, "guidance", rows, np.floating)
            if (values != np.float32(self.guidance)).any():
                other = float(values[values != np.float32(self.guidance)][0])
                raise RequestError(f"guidance {other:g} was sent; this repository samples with guidance "
                                   f"{self.guidance:g}, baked in when it was written")
        return z, labels


    def _tensor(self, request, spec, rows):
        """One condition input of a request: present, of its dtype and per-row shape, finite, one row per sample."""
        value = _get(request, spec["name"])
        want = "[" + ", ".join(["B"] + [str(d) for d in spec["shape"] or [1]]) + "]"
        if value is None:
            raise RequestError(f"send {spec['name']} ({spec['dtype']} {want}): this model's condition")
        if value.dtype != np.dtype(spec["dtype"]):
            raise RequestError(f"{spec['name']} has dtype {value.dtype}; expected {spec['dtype']}")
        if not spec["shape"] and value.ndim == 2 and value.shape[1] == 1:
            value = value[:, 0]  # a per-row scalar arrives as [B, 1]
        if value.ndim != len(spec["shape"]) + 1 or list(value.shape[1:]) != spec["shape"] or value.shape[0] != rows:
            raise RequestError(f"{spec['name']} has shape {list(value.shape)}; expected {want} with B = {rows}")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise RequestError(f"{spec['name']} holds NaN or inf")
        return value


def _get(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _rows(values, name, rows, kind):
    """One value per row: [B, 1] as Triton sends dims [1] (or [B]), of the right kind, as a flat array."""
    if not np.issubdtype(values.dtype, kind):
        raise RequestError(f"{name} has dtype {values.dtype}; expected {'INT64' if kind is np.integer else 'FP32'}")
    flat = values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values
    if flat.ndim != 1 or flat.shape[0] < 1 or (rows is not None and flat.shape[0] != rows):
        want = f"[{rows}, 1]" if rows is not None else "[B, 1]"
        raise RequestError(f"{name} has shape {list(values.shape)}; expected {want}, one per sample")
    return flat.astype(np.int64 if kind is np.integer else np.float32)


def _error(message, code):
    # Error codes arrived in the Python backend of 23.x; an older one takes the message alone.
    code = getattr(pb_utils.TritonError, code, None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)
