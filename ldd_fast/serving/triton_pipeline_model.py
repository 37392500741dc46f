"""ldd-fast's Triton Python-backend model for a text-to-image pipeline: prompt + seed -> image.

ldd_fast.serving.write_pipeline_repository copies this file verbatim to <repository>/<name>/<version>/model.py;
ldd-fast never imports it (it needs Triton's `triton_python_backend_utils`). It loads everything from its version
folder: the copied pipeline (safetensors only, nothing fetched), the schedule, and for backend "onnxruntime" the
exported sampler graph.

Requests (the first dimension is the request's batch B):
    prompt  BYTES [B, 1]  UTF-8 text, one image per row
    seed    INT64 [B, 1]  optional: row i's noise is what `ldd-fast sample --pipeline P --prompt ... --seed s -n 1`
                          makes; without it each row gets a random seed
Response: image UINT8 [B, H, W, 3], round((x + 1) * 127.5) of the decoded image in [-1, 1] (the PNG's pixels).
A request that cannot be served as sent (no prompt, not UTF-8, an empty or over-long prompt, a negative seed,
seeds that do not match the prompts) gets INVALID_ARG (HTTP 400) naming the problem; the others in the same call
still run. The well-formed requests of one call are one encode / sample / decode batch.
"""
import os
import secrets

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

import ldd_fast as lf
from ldd_fast.pipelines import PIPELINES
from ldd_fast.serving.instance import SAMPLER_FILE, RequestError, instance_device, parse_requests, read_spec
from ldd_fast.teacher import noise_for

FORMAT = ("ldd-fast triton pipeline", 1)



class TritonPythonModel:
    def initialize(self, args):
        import diffusers

        folder, spec = read_spec(args, FORMAT)
        self.device = instance_device(args, spec.get("threads"))
        if spec["class"] not in PIPELINES:  # never getattr an arbitrary name of the package
            raise lf.StateFileError(f"{SAMPLER_FILE}: unknown pipeline class {spec['class']!r}")
        pipe = getattr(diffusers, spec["class"]).from_pretrained(os.path.join(folder, spec["pipeline"]),
                                                                 local_files_only=True, use_safetensors=True)
        pipe.set_progress_bar_config(disable=True)
        self.den = lf.from_pipeline(pipe.to(self.device), **spec["from_pipeline"]).to(self.device)
        if self.den.fingerprint() != spec["fingerprint"]:
            raise lf.StateFileError(f"the pipeline in {folder} is not the one this repository was written for "
                                    f"(fingerprint {self.den.fingerprint()[:12]}... vs {spec['fingerprint'][:12]}...)")
        self.schedule = lf.Schedule.load(os.path.join(folder, spec["schedule"]))
        self.kwargs = dict(solver=spec["solver"], order=spec["order"], force=spec["force"], **spec["options"])
        self.runner = None
        if spec["backend"] == "onnxruntime":
            from ldd_fast.export import OnnxSampler

            self.runner = OnnxSampler(os.path.join(folder, spec["graph"]), threads=spec.get("threads") or None)
        self.shape = tuple(spec["sample_shape"])
        self.max_chars = int(spec["max_prompt_chars"])

    def finalize(self):
        self.den = self.runner = None

    def execute(self, requests):
        responses, parsed = parse_requests(requests, self._parse, _error)  # parsed: (index, *what _parse gave)
        if parsed:
            try:
                images = self._images([p for _, prompts, _ in parsed for p in prompts],
                                      [s for _, _, seeds in parsed for s in seeds])
                start = 0
                for i, prompts, _ in parsed:
                    rows = images[start:start + len(prompts)]
                    start += len(prompts)
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("image", rows)])
            except Exception as e:  # noqa: BLE001 - answered, not raised: the model keeps serving
                for i, _, _ in parsed:
                    responses[i] = _error(f"the pipeline failed: {type(e).__name__}: {e}", "INTERNAL")
        return responses

    def _images(self, prompts, seeds):
        with torch.no_grad():
            cond = self.den.encode_prompt(prompts)
            z = torch.cat([noise_for(1, self.shape, s) for s in seeds]).to(self.device)
            if self.runner is not None:
                x = self.runner(z, cond)
            else:
                x = lf.sample(self.den, z, self.schedule, cond=cond, **self.kwargs)
            images = self.den.decode(x)
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return np.ascontiguousarray(pixels.permute(0, 2, 3, 1).cpu().numpy())

    def _parse(self, request):
        prompt = pb_utils.get_input_tensor_by_name(request, "prompt")
        seed = pb_utils.get_input_tensor_by_name(request, "seed")
        if prompt is None:
            raise RequestError("send prompt (BYTES [B, 1], UTF-8 text)")
        raw = prompt.as_numpy().reshape(-1)
        prompts = []
        for value in raw:
            try:
                text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError:
                raise RequestError("prompt is not UTF-8 text") from None
            if not text.strip():
                raise RequestError("prompt is empty")
            if len(text) > self.max_chars:
                raise RequestError(f"prompt has {len(text)} characters; at most {self.max_chars}")
            prompts.append(text)
        if seed is None:
            return prompts, [secrets.randbits(62) for _ in prompts]
        seeds = seed.as_numpy()
        if not np.issubdtype(seeds.dtype, np.integer):
            raise RequestError(f"seed has dtype {seeds.dtype}; expected INT64")
        seeds = seeds.reshape(-1)
        if len(seeds) != len(prompts):
            raise RequestError(f"{len(seeds)} seeds for {len(prompts)} prompts: one seed per prompt")
        if (seeds < 0).any():
            raise RequestError(f"seed {int(seeds[seeds < 0][0])} is negative: seeds are 0 .. 2**63 - 1")
        return prompts, [int(s) for s in seeds]


def _error(message, code):
    code = getattr(pb_utils.TritonError, code, None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)
