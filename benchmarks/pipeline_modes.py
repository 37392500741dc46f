"""Which LD3 mode `ldd-fast learn --pipeline` should default to: lambda vs time on the tiny pipelines.

Each run is the command a user types (`ldd-fast learn --pipeline DIR --prompts FILE --mode M`, UniPC-3 at
NFE 6, 50 + 50 teacher pairs over the tiny pipelines' 8 prompts: 4 train, 4 validation, disjoint); the
schedule file then holds the comparison the command prints: RMSE to the teacher on the validation pairs
for the learned sampler and for the pipeline's own scheduler grid at NFE 6 and 12. Random-weight tiny
pipelines (tests/tiny_pipelines.py): a plumbing and mode check, not image quality.

    python benchmarks/pipeline_modes.py [--threads 1]   # resumable per row
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests")]

from common import done_rows, env_markdown, environment, pin_threads, write_results  # noqa: E402

NAME = "pipeline_modes"
NFE = 6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    threads = pin_threads(args.threads)

    import ldd_fast as lf
    import tiny_pipelines as tp
    from ldd_fast.cli import main as cli

    rows = done_rows(NAME, lambda r: (r["pipeline"], r["mode"]))
    with tempfile.TemporaryDirectory() as tmp:
        prompts = os.path.join(tmp, "prompts.txt")
        with open(prompts, "w") as f:
            f.write("\n".join(tp.PROMPTS) + "\n")
        for kind in ("sd", "sd3", "flux"):
            folder = os.path.join(tmp, kind)
            tp.build(kind).save_pretrained(folder)
            extra = [] if kind == "sd" else ["--max-sequence-length", "8"]
            for mode in ("lambda", "time"):
                if (kind, mode) in rows:
                    continue
                out = os.path.join(tmp, f"{kind}_{mode}.json")
                t0 = time.perf_counter()
                code = cli(["learn", "--pipeline", folder, "--prompts", prompts, "--height", "16", "--width", "16",
                            *extra, "--solver", "unipc", "--order", "3", "--nfe", str(NFE), "--mode", mode,
                            "--threads", str(threads), "--out", out])
                if code != 0:
                    raise SystemExit(f"learn failed on {kind} {mode}")
                m = lf.Schedule.load(out).metrics
                rows[(kind, mode)] = {"pipeline": kind, "mode": mode, "seconds": time.perf_counter() - t0,
                                      **{k: m[k] for k in m if k.startswith("pipeline_")},
                                      "valid_hard": m["valid_hard"]}
                _write(rows, threads)
    _write(rows, threads)


def _write(rows: dict, threads: int) -> None:
    env = environment(threads)
    lines = [f"# LD3 mode on the tiny pipelines (UniPC-3, NFE {NFE}, 50 + 50 pairs, 4 + 4 prompts)", "",
             "RMSE to the teacher on the validation pairs (prompts unseen in training), same seeds. "
             "Random-weight tiny pipelines: a plumbing and mode check.", "",
             f"| pipeline | mode | learned | own grid NFE {NFE} | own grid NFE {2 * NFE} | own scheduler | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows.values():
        lines.append(f"| {r['pipeline']} | {r['mode']} | {r['pipeline_rmse_learned']:.4f} | "
                     f"{r['pipeline_rmse_own']:.4f} | {r['pipeline_rmse_own_2x']:.4f} | {r['pipeline_scheduler']} "
                     f"({r['pipeline_solver']}) | {r['seconds']:.0f} |")
    lines += ["", "## Environment", "", env_markdown(env)]
    write_results(NAME, {"rows": list(rows.values()), "env": env}, "\n".join(lines))


if __name__ == "__main__":
    main()
