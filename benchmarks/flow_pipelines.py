"""Flow models and text-to-image pipelines (issue 10): agreement with diffusers, learning cost, memory.

    python benchmarks/flow_pipelines.py [--threads 1] [--only agreement|cost|memory]

1. agreement: diffusers' own loops vs lf.sample on the same latents and embeddings, max |diff| / max |ref|:
   FlowMatchEulerDiscreteScheduler (shift 1 and 3, and dynamic shifting) and FlowMatchHeunDiscreteScheduler
   on a tiny random SD3 transformer; the StableDiffusionPipeline / StableDiffusion3Pipeline / FluxPipeline
   __call__ with lf.to_diffusers_scheduler (UniPC-3, a learned-like schedule) vs lf.sample.
2. cost: lf.learn with LD3's default settings (100 teacher pairs, 7 rounds, UniPC-3, NFE 4, time mode) on
   the tiny SD3 pipeline over 8 prompts: wall time, network calls, peak RSS.
3. memory: one LD3 gradient (a student of NFE 2 and 4 through an SD-size UNet2DConditionModel: diffusers'
   default with 768-wide text states = Stable Diffusion 1.x, 860 M random weights, 64 x 64 latents,
   batch 1) with and without checkpoint_calls, each in a fresh process: peak RSS (the weights do not change memory).
Writes benchmarks/results/flow_pipelines.{json,md}.
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

import ldd_fast as lf  # noqa: E402


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def agreement() -> dict:
    import diffusers
    import tiny_pipelines as tp

    out = {}
    den3 = lf.from_pipeline(tp.build("sd3"), height=16, width=16, max_sequence_length=8)
    transformer = tp.build("sd3").transformer
    plain = lf.from_diffusers(transformer, diffusers.FlowMatchEulerDiscreteScheduler())
    cond = den3.encode_prompt(tp.PROMPTS[:4])
    z = torch.randn(4, *den3.sample_shape, generator=torch.Generator().manual_seed(0))

    def velocity(x, ts):
        return transformer(hidden_states=x, timestep=ts.expand(x.shape[0]), encoder_hidden_states=cond[0],
                           pooled_projections=cond[1], return_dict=False)[0]

    for name, cls, config, grid, solver in [
            ("FlowMatchEuler shift 1", "FlowMatchEulerDiscreteScheduler", {"shift": 1.0}, {"shift": 1.0}, "euler"),
            ("FlowMatchEuler shift 3", "FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, {"shift": 3.0}, "euler"),
            ("FlowMatchEuler dynamic (mu 0.9)", "FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": True},
             {"mu": 0.9}, "euler"),
            ("FlowMatchHeun shift 3", "FlowMatchHeunDiscreteScheduler", {"shift": 3.0}, {"shift": 3.0}, "heun")]:
        worst = 0.0
        for steps in (4, 8):
            scheduler = getattr(diffusers, cls)(**config)
            scheduler.set_timesteps(steps, **({"mu": grid["mu"]} if "mu" in grid else {}))
            x = z.clone()
            with torch.no_grad():
                for ts in scheduler.timesteps:
                    x = scheduler.step(velocity(x, ts), ts, x, return_dict=False)[0]
                nfe = 2 * steps - 1 if solver == "heun" else steps
                sched = lf.discretize(plain.noise, nfe, "flowmatch", final="zero", solver=solver, **grid)
                ours = lf.sample(plain, z, sched, solver=solver, cond=cond)
            worst = max(worst, _rel(ours, x))
        out[f"{name}, 4 and 8 steps"] = worst
    for kind in ("sd", "sd3", "flux"):
        pipe = tp.build(kind)
        den = lf.from_pipeline(pipe, height=16, width=16, max_sequence_length=8)
        rel = tp.drop_in_difference(pipe, den, tp.learned_like_schedule(den), batch=4)
        out[f"{type(pipe).__name__}.__call__ with our scheduler (UniPC-3, NFE 3)"] = rel
    return out


def cost() -> dict:
    import tiny_pipelines as tp

    den = lf.from_pipeline(tp.build("sd3"), height=16, width=16, max_sequence_length=8)
    cond = den.encode_prompt(tp.PROMPTS)
    t0 = time.perf_counter()
    res = lf.learn(den, solver="unipc", order=3, nfe=4, shape=den.sample_shape, mode="time", cond=cond,
                   show_progress=False)
    wall = time.perf_counter() - t0
    m = res.schedule.metrics
    return {"model": "tiny SD3 pipeline (12 k transformer parameters), 16 x 16 images, 8 prompts (4 / 4)",
            "wall_seconds": wall, "network_calls": res.stats["network_calls"],
            "peak_rss_mib": res.stats["peak_rss_mib"],
            "valid_hard_init": m["valid_hard_init"], "valid_hard": m["valid_hard"],
            "teacher": "UniPC-3, 20 steps, 100 pairs (time mode, 2 + 5 rounds, batch 2)"}


MEMORY_CHILD = """
import resource, sys, time, torch, diffusers, ldd_fast as lf
from ldd_fast.learn import LD3Config, LD3Trainer
from ldd_fast.teacher import TeacherData
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[2]))
# Stable Diffusion 1.x: diffusers' default UNet2DConditionModel with CLIP's 768-wide text states
unet = diffusers.UNet2DConditionModel(cross_attention_dim=768, sample_size=64).eval().requires_grad_(False)
sched = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
den = lf.from_diffusers(unet, sched)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
z, y, cond = torch.randn(2, 4, 64, 64), torch.randn(2, 4, 64, 64), torch.randn(2, 77, 768)
data = TeacherData(z, y, cond, {"teacher": None})
tr = LD3Trainer(den, solver="unipc", order=2, nfe=int(sys.argv[3]), teacher=data,
                config=LD3Config(n_train=1, n_valid=1), checkpoint_calls=sys.argv[1] == "1", show_progress=False)
t0 = time.perf_counter()
tr.distances(tr.train.z, tr.y_train, tr._cond(tr.train, torch.arange(1))).mean().backward()
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t0)
"""


MEMORY_NFES = (2, 4)


def memory(threads: int) -> dict:
    rows = {}
    for nfe in MEMORY_NFES:
        for ckpt in (False, True):
            out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, "1" if ckpt else "0", str(threads), str(nfe)],
                                 capture_output=True, text=True, check=True)
            base, peak, seconds = (float(v) for v in out.stdout.split()[-3:])
            rows[f"NFE {nfe}, " + ("checkpoint_calls" if ckpt else "plain")] = {
                "rss_after_weights_mib": base, "peak_rss_mib": peak, "backprop_mib": peak - base, "seconds": seconds}
    rows["setting"] = ("UNet2DConditionModel(cross_attention_dim=768) (Stable Diffusion 1.x config, 860 M "
                       "parameters, random weights), 64 x 64 x 4 latents, batch 1, text condition 77 x 768, "
                       "UniPC-2: one loss and its gradient w.r.t. the time parameters")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["agreement", "cost", "memory"])
    args = ap.parse_args(argv)
    threads = common.pin_threads(args.threads)
    path = os.path.join(common.RESULTS, "flow_pipelines.json")
    results = {}
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
    for name, fn in (("agreement", agreement), ("cost", cost), ("memory", lambda: memory(threads))):
        if args.only in (None, name):
            results[name] = fn()
            print(name, json.dumps(results[name], indent=1), flush=True)
    results["env"] = common.environment(threads)
    lines = ["# Flow models and pipelines: agreement with diffusers, learning cost, memory\n"]
    if "agreement" in results:
        lines += ["## Agreement with diffusers (float32, max |ours - diffusers| / max |diffusers|)\n",
                  "| loop | relative difference |", "|---|---|"]
        lines += [f"| {k} | {v:.2e} |" for k, v in results["agreement"].items()]
        lines.append("")
    if "cost" in results:
        c = results["cost"]
        lines += ["## LD3 on a tiny random pipeline\n", f"{c['model']}; {c['teacher']}: {c['wall_seconds']:.1f} s, "
                  f"{c['network_calls']} batched network calls, peak RSS {c['peak_rss_mib']:.0f} MiB; held-out "
                  f"loss {c['valid_hard_init']:.4f} -> {c['valid_hard']:.4f}.\n"]
    if "memory" in results:
        m = results["memory"]
        lines += ["## Memory of an LD3 gradient through an SD-size UNet\n", m["setting"] + ".\n",
                  "| | RSS after the weights MiB | peak RSS MiB | backpropagation MiB | seconds |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {m[k]['rss_after_weights_mib']:.0f} | {m[k]['peak_rss_mib']:.0f} | "
                  f"{m[k]['backprop_mib']:.0f} | {m[k]['seconds']:.1f} |" for k in m if k != "setting"]
        lines.append("")
    lines += ["Environment:", common.env_markdown(results["env"])]
    print("wrote", *common.write_results("flow_pipelines", results, "\n".join(lines)))


if __name__ == "__main__":
    main()
