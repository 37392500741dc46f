"""What the two Python-backend models (a sampler's and a pipeline's model.py) do alike at load time, importable
inside Triton's stub (torch and ldd_fast only): read the version's sampler.json, and place the instance."""
from __future__ import annotations

import json
import os

import torch

from ..errors import StateFileError

SAMPLER_FILE = "sampler.json"


def read_spec(args: dict, fmt: tuple[str, int]) -> tuple[str, dict]:
    """(the version folder, its sampler.json) from the Python backend's initialize(args); a StateFileError
    when the file is not of format `fmt` (name, version)."""
    folder = os.path.join(args["model_repository"], str(args["model_version"]))
    with open(os.path.join(folder, SAMPLER_FILE), encoding="utf-8") as f:
        spec = json.load(f)
    if (spec.get("format"), spec.get("format_version")) != tuple(fmt):
        raise StateFileError(f"{folder}/{SAMPLER_FILE} is not a {fmt[0]} file of version {fmt[1]} (rewrite the "
                             "repository with this ldd-fast)")
    return folder, spec


def instance_device(args: dict, threads: int | None) -> torch.device:
    """Where Triton runs this instance (its instance_group kind and device id); on the CPU, torch's intra-op
    threads set to `threads` when the repository says."""
    if args.get("model_instance_kind") == "GPU":
        return torch.device(f"cuda:{int(args.get('model_instance_device_id', 0))}")
    if threads:
        torch.set_num_threads(int(threads))
    return torch.device("cpu")


class RequestError(Exception):
    """A request that cannot be served as sent: answered with INVALID_ARG (HTTP 400); the others still run."""


def parse_requests(requests, parse, error) -> tuple[list, list]:
    """(responses, parsed): parse(request) of each request as (index, *parsed), and in `responses` (None where
    parsed) the error(message, code) of each one that failed: INVALID_ARG for a RequestError, INTERNAL for a
    bug in parsing, which fails that request, never the model."""
    responses, parsed = [None] * len(requests), []
    for i, request in enumerate(requests):
        try:
            parsed.append((i, *parse(request)))
        except RequestError as e:
            responses[i] = error(str(e), "INVALID_ARG")
        except Exception as e:  # noqa: BLE001 - answered, not raised
            responses[i] = error(f"internal error reading the request: {type(e).__name__}: {e}", "INTERNAL")
    return responses, parsed
