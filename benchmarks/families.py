"""Pipeline families: agreement with each family's own diffusers loop, LD3 on the tiny Wan pipeline, memory of an
LD3 gradient at Wan 2.1-1.3B width.

    python benchmarks/families.py [--threads 1] [--only agreement|wan_ld3|memory]

1. agreement: lf.sample on den.pipeline_schedule(nfe) vs the family's own loop (tests/test_family_agreement.py:
   SD with DDIM and EulerDiscrete, SDXL EulerDiscrete, SD3 FlowMatchEuler shift 3, Flux FlowMatchEuler dynamic
   shift, Wan UniPC-2 on flow sigmas), NFE 4 and 8, float64 and float32, max |ours - diffusers| / max |diffusers|;
   and the measured departure (Wan's integer network times).
2. wan_ld3: on the tiny random Wan pipeline (random weights: a cost and plumbing check, not a quality figure):
   LD3 (time mode) and the learned solver (coefficients=True), UniPC-2 at NFE 4, against Wan's own UniPC grid
   (pipeline_schedule(4)): RMSE to the 40-step teacher (TeacherSpec.default_for: UniPC-3, time-quadratic) on
   held-out seeds and prompts, and learning seconds.
3. memory: one LD3 gradient (NFE 2 and 4) through a WanTransformer3DModel at Wan 2.1-1.3B width (dim 1536, 12 heads of
   128, ffn 8960) with 2 layers (random weights), 17 frames at 256 x 256 (latent 16 x 5 x 32 x 32: 1280 tokens),
   512 text tokens of 4096, guidance 5 (batch 2 inside), with and without checkpoint_calls, each in a fresh
   process: peak RSS, extrapolated linearly in the layer count to 30 layers.
Writes benchmarks/results/families.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import common  # noqa: E402

NFES = (4, 8)


def agreement() -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import ldd_fast as lf
    import test_family_agreement as fa
    import tiny_pipelines as tp

    rows = []
    for kind, scheduler in fa.CASES:
        for dtype in (torch.float64, torch.float32):
            for nfe in NFES:
                ours, theirs = fa.ours_and_theirs(kind, scheduler, nfe, dtype)
                pipe, _ = fa.family(kind, scheduler, dtype)
                rows.append({"family": kind, "scheduler": type(pipe.scheduler).__name__,
                             "loop": "minimal loop (WanPipeline's, adapter's times)" if kind == "wan" else "__call__",
                             "dtype": str(dtype).replace("torch.", ""), "nfe": nfe, "rel": fa._rel(ours, theirs)})
                print(rows[-1], flush=True)
    departures = []
    pipe, den = fa.family("wan")
    cond = den.encode_prompt(tp.PROMPTS[:fa.BATCH])
    truncated = lf.Denoiser(den.net, den.noise, prediction="flow", time_input=lambda t: torch.floor(1000 * t),
                            guidance_scale=den.guidance_scale, null_cond=den.null_cond, sample_shape=den.sample_shape)
    for nfe in NFES:
        z = torch.randn(fa.BATCH, *den.sample_shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        sched = den.pipeline_schedule(nfe)
        twin = type(pipe.scheduler).from_config(pipe.scheduler.config)
        twin.set_timesteps(nfe)
        loop = fa.wan_loop(pipe, den, cond, z, nfe, integer_times=True)
        own = tp.pipeline_call(pipe, den, cond, z.float(), nfe).double()
        with torch.no_grad():
            moved = lf.sample(den, z, sched.replace(t_eval=twin.timesteps.double() / 1000), cond=cond)
            trunc = lf.sample(truncated, z, sched, cond=cond)
        departures += [
            {"what": "wan, integer times: t_eval = int64(1000 sigma) / 1000 vs the float64 loop", "dtype": "float64",
             "nfe": nfe, "rel": fa._rel(moved, loop)},
            {"what": "wan, integer times: a Denoiser with time floor(1000 t), converting at t, vs the float64 loop",
             "dtype": "float64", "nfe": nfe, "rel": fa._rel(trunc, loop)},
            {"what": "wan, integer times: the same vs WanPipeline.__call__ (float32 latents)",
             "dtype": "float32 (pipeline)", "nfe": nfe, "rel": fa._rel(own, trunc)}]
        print(departures[-3:], flush=True)
    return {"rows": rows, "departures": departures}


HELD_OUT_PROMPTS = ["a big blue dog", "the digit three", "a small red painting", "a cat drawing",
                    "the digit nine", "a photo of a big cat", "red and blue", "a dog painting"]


def wan_ld3(n_train: int, n_valid: int, n_eval: int) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import ldd_fast as lf
    import tiny_pipelines as tp
    from ldd_fast.teacher import TeacherSpec, make_teacher

    den = lf.from_pipeline(tp.build("wan"), height=16, width=16, num_frames=5, max_sequence_length=8)
    cond = den.encode_prompt(tp.PROMPTS)
    spec = TeacherSpec.default_for(den.noise)
    eval_cond = den.encode_prompt([HELD_OUT_PROMPTS[i % len(HELD_OUT_PROMPTS)] for i in range(n_eval)])
    held = make_teacher(den, den.sample_shape, n_eval, spec=spec, seed=12345, cond=eval_cond, show_progress=False)

    def rmse(sched) -> float:
        with torch.no_grad():
            x = lf.sample(den, held.z, sched, cond=held.cond)
        return float(((x.float() - held.y) ** 2).flatten(1).mean(1).sqrt().mean())

    rows = {"Wan's own UniPC-2 grid (pipeline_schedule(4))": {"rmse": rmse(den.pipeline_schedule(4)),
                                                                "learn_seconds": 0.0}}
    for name, coefficients in (("LD3, time mode (UniPC-2)", False), ("learned solver (coefficients=True)", True)):
        t0 = time.perf_counter()
        res = lf.learn(den, solver="unipc", order=2, nfe=4, shape=den.sample_shape, cond=cond, mode="time",
                       n_train=n_train, n_valid=n_valid, coefficients=coefficients, show_progress=False)
        seconds = time.perf_counter() - t0
        rows[name] = {"rmse": rmse(res.schedule), "learn_seconds": seconds,
                      "network_calls": res.stats.get("network_calls"),
                      "valid_hard_init": res.schedule.metrics.get("valid_hard_init"),
                      "valid_hard": res.schedule.metrics.get("valid_hard")}
        print(name, rows[name], flush=True)
    return {"rows": rows, "setting": (
        f"tiny random WanPipeline (tests/tiny_pipelines.py: 1 layer, random weights: a cost and plumbing check, not a "
        f"quality figure), latents 4 x 2 x 4 x 4, guidance 5; teacher {spec.solver}-{spec.order}, {spec.nfe} steps "
        f"({spec.kind}); LD3 on {n_train} + {n_valid} pairs over the 8 test prompts (4 train / 4 valid); RMSE per "
        f"sample, mean over {n_eval} held-out seeds (seed 12345) and 8 held-out prompts")}


MEMORY_CHILD = """
import resource, sys, time, torch, diffusers, ldd_fast as lf
from diffusers.utils import logging
from ldd_fast.learn import LD3Config, LD3Trainer
from ldd_fast.teacher import TeacherData
logging.set_verbosity_error()
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[2]))
layers, text = int(sys.argv[4]), 512
net = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                                      in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                                      num_layers=layers).eval().requires_grad_(False)
sched = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                          solver_order=2, final_sigmas_type="zero")
den = lf.from_diffusers(net, sched, guidance_scale=5.0, null_cond=torch.randn(text, 4096), latent_size=(5, 32, 32))
params = sum(p.numel() for p in net.parameters())
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
z, y, cond = torch.randn(2, 16, 5, 32, 32), torch.randn(2, 16, 5, 32, 32), torch.randn(2, text, 4096)
data = TeacherData(z, y, cond, {"teacher": None})
tr = LD3Trainer(den, solver="unipc", order=2, nfe=int(sys.argv[3]), teacher=data,
                config=LD3Config(n_train=1, n_valid=1), checkpoint_calls=sys.argv[1] == "1", show_progress=False)
t0 = time.perf_counter()
tr.distances(tr.train.z, tr.y_train, tr._cond(tr.train, torch.arange(1))).mean().backward()
print(params, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t0)
"""


def memory(threads: int, timeout: float, nfes=(2, 4)) -> dict:
    rows = {}
    for nfe in nfes:
        for ckpt in (False, True):
            mode = f"NFE {nfe}, " + ("checkpoint_calls" if ckpt else "plain")
            for layers in (1, 2):
                t0 = time.perf_counter()
                try:
                    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, "1" if ckpt else "0", str(threads),
                                          str(nfe), str(layers)], capture_output=True, text=True, check=True,
                                         timeout=timeout)
                except subprocess.TimeoutExpired:
                    rows[f"{layers} layers, {mode}"] = {"skipped": f"> {timeout} s"}
                    continue
                params, base, peak, seconds = (float(v) for v in out.stdout.split()[-4:])
                rows[f"{layers} layers, {mode}"] = {
                    "layers": layers, "nfe": nfe, "parameters": int(params), "rss_after_weights_mib": base,
                    "peak_rss_mib": peak, "backprop_mib": peak - base, "seconds": seconds,
                    "process_seconds": time.perf_counter() - t0}
                print(rows[f"{layers} layers, {mode}"], flush=True)
            one, two = rows.get(f"1 layers, {mode}", {}), rows.get(f"2 layers, {mode}", {})
            if "backprop_mib" in one and "backprop_mib" in two:
                per_layer = two["backprop_mib"] - one["backprop_mib"]
                rows[f"30 layers, {mode} (linear extrapolation)"] = {
                    "layers": 30, "backprop_mib_per_layer": per_layer,
                    "backprop_mib": two["backprop_mib"] + 28 * per_layer, "extrapolated": True}
    rows["setting"] = ("WanTransformer3DModel at Wan 2.1-1.3B width (dim 1536 = 12 heads x 128, ffn 8960, text_dim "
                       "4096, freq_dim 256, random weights) with 1 and 2 layers, 17 frames at 256 x 256 = latent "
                       "16 x 5 x 32 x 32, patch (1, 2, 2): 5 x 16 x 16 = 1280 video tokens, 512 text tokens; "
                       "guidance 5 (cond and uncond in one batch of 2), batch 1, UniPC-2 at NFE 2 and 4: one LD3 loss and "
                       "its gradient w.r.t. the time parameters, float32, in a fresh process each; 30 layers is a "
                       "linear extrapolation of the backpropagation memory in the layer count (not measured)")
    return rows


def markdown(results: dict) -> str:
    lines = ["# Pipeline families: agreement with their own diffusers loops, LD3 on tiny Wan, memory at Wan width\n",
             "Tiny random pipelines from tests/tiny_pipelines.py (random weights). `benchmarks/families.py`.\n"]
    if "agreement" in results:
        a = results["agreement"]
        table = {}
        for r in a["rows"]:
            table.setdefault((r["family"], r["scheduler"], r["loop"]), {})[(r["dtype"], r["nfe"])] = r["rel"]
        lines += ["## Agreement: lf.sample on den.pipeline_schedule(nfe) vs the family's own loop\n",
                  "max |ours - diffusers| / max |diffusers|; network, latents, embeddings in the dtype shown. "
                  "EulerDiscrete ends on sigma 0, and so does pipeline_schedule (it ended at t_min before this "
                  "benchmark found it: 1.8e-3 - 3.8e-3 apart).\n",
                  "| family | scheduler | loop | float64 NFE 4 | float64 NFE 8 | float32 NFE 4 | float32 NFE 8 |",
                  "|---|---|---|---|---|---|---|"]
        for (fam, sch, loop), v in table.items():
            cells = " | ".join(f"{v.get((d, n), float('nan')):.1e}" for d in ("float64", "float32") for n in NFES)
            lines.append(f"| {fam} | {sch} | {loop} | {cells} |")
        lines += ["", "Departures (measured, float64 unless stated):\n", "| what | dtype | NFE | relative |",
                  "|---|---|---|---|"]
        lines += [f"| {d['what']} | {d['dtype']} | {d['nfe']} | {d['rel']:.1e} |" for d in a["departures"]]
        lines.append("")
    if "wan_ld3" in results:
        w = results["wan_ld3"]
        lines += ["## LD3 and the learned solver on the tiny Wan pipeline, NFE 4\n", w["setting"] + ".\n",
                  "| sampler | RMSE to the teacher (held out) | learning s | network calls |", "|---|---|---|---|"]
        for k, r in w["rows"].items():
            seconds = f"{r['learn_seconds']:.1f}" if r["learn_seconds"] else "-"
            lines.append(f"| {k} | {r['rmse']:.4f} | {seconds} | {r.get('network_calls') or '-'} |")
        lines.append("")
    if "memory" in results:
        m = results["memory"]
        lines += ["## Memory of one LD3 gradient at Wan 2.1-1.3B width\n", m["setting"] + ".\n",
                  "Peak RSS (ru_maxrss) is noisy here: an earlier run of the same script measured 2 layers, NFE 2, plain "
                  "at 1812 MiB of backpropagation (2636 below), so the per-layer slopes (and the 30-layer figures) are "
                  "rough, +- ~50 %. What holds across both runs: checkpoint_calls does not grow with NFE (1 layer: "
                  "1217 / 1287 MiB at NFE 2 / 4) where plain does (1392 / 2574 MiB).\n",
                  "| | parameters | RSS after weights MiB | peak RSS MiB | backpropagation MiB | seconds |",
                  "|---|---|---|---|---|---|"]
        for k, r in m.items():
            if k == "setting":
                continue
            if "skipped" in r:
                lines.append(f"| {k} | skipped: {r['skipped']} | | | | |")
            elif r.get("extrapolated"):
                lines.append(f"| {k} | - | - | - | {r['backprop_mib']:.0f} (extrapolated; "
                             f"{r['backprop_mib_per_layer']:.0f} per layer) | - |")
            else:
                lines.append(f"| {k} | {r['parameters'] / 1e6:.1f} M | {r['rss_after_weights_mib']:.0f} | "
                             f"{r['peak_rss_mib']:.0f} | {r['backprop_mib']:.0f} | {r['seconds']:.1f} |")
        lines.append("")
    lines += ["Environment:", common.env_markdown(results["env"])]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["agreement", "wan_ld3", "memory"])
    ap.add_argument("--n-train", type=int, default=20)
    ap.add_argument("--n-valid", type=int, default=20)
    ap.add_argument("--n-eval", type=int, default=32)
    ap.add_argument("--memory-timeout", type=float, default=150.0, help="seconds per memory child")
    args = ap.parse_args(argv)
    threads = common.pin_threads(args.threads)
    path = os.path.join(common.RESULTS, "families.json")
    results = {}
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
    jobs = (("agreement", agreement), ("wan_ld3", lambda: wan_ld3(args.n_train, args.n_valid, args.n_eval)),
            ("memory", lambda: memory(threads, args.memory_timeout)))
    for name, fn in jobs:
        if args.only in (None, name):
            t0 = time.perf_counter()
            results[name] = fn()
            results.setdefault("seconds", {})[name] = time.perf_counter() - t0
            results["env"] = common.environment(threads)
            print("wrote", *common.write_results("families", results, markdown(results)), flush=True)


if __name__ == "__main__":
    main()
