#!/usr/bin/env bash
# `ldd-fast bench` as a user gets it: a clean wheel install (not editable) in a fresh virtual environment
# with its own torch, run outside the checkout, on the built-in model and on a diffusers model folder,
# CPU backends (eager, compile, onnxruntime; the GPU ones are listed with the reason).
#
#   bash benchmarks/wheel_bench.sh            (a few minutes: pip installs, then two benches)
#
# Needs the package registry (torch==2.13.0 comes from this project's machines' local file). Writes
# benchmarks/results/bench_wheel/{digits,diffusers}.{json,md,png} and setup.txt (versions, commands).
# The CI test tests/test_wheel.py does the cheap version (wheel in a venv reusing the installed torch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results/bench_wheel"
WORK="$(mktemp -d /tmp/wheel_bench.XXXXXX)"
THREADS=${THREADS:-1}
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

"$PY" -m pip wheel --no-deps --quiet -w "$WORK/dist" "$ROOT"
WHEEL="$(ls "$WORK"/dist/*.whl)"
"$PY" -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/python" -m pip install --quiet torch==2.13.0
"$V/python" -m pip install --quiet "$WHEEL[export,diffusers,demo]"

cd "$WORK"  # outside the checkout: every import comes from the wheel
"$V/python" - <<'EOF'
# A diffusers model folder as a user has one: UNet2DModel (random weights, a small DDPM layout) + its scheduler.
import torch
from diffusers import DDPMScheduler, UNet2DModel

torch.manual_seed(0)
unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128),
                   layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
unet.save_pretrained("ddpm_folder/unet", safe_serialization=True)
DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained("ddpm_folder/scheduler")
print(f"ddpm_folder: UNet2DModel {sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters, 3x32x32")
EOF
{
  echo "# ldd-fast bench from a clean wheel install"
  echo
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); wheel: $(basename "$WHEEL"); python: $("$V/python" --version)"
  echo "ldd_fast imported from: $("$V/python" -c 'import ldd_fast; print(ldd_fast.__file__)')"
  echo
  echo "commands (run in an empty folder, fresh venv):"
  echo "  pip install torch==2.13.0 && pip install '$(basename "$WHEEL")[export,diffusers,demo]'"
  echo "  ldd-fast bench --model digits --schedule edm --nfe 6 --backends eager,compile,onnxruntime,triton,cuda_graph,tensorrt --batch 1 8 64 --threads $THREADS"
  echo "  ldd-fast bench --model ddpm_folder --schedule edm --nfe 6 --backends eager,compile,onnxruntime --batch 1 8 --threads $THREADS"
  echo
  echo "packages:"
  "$V/python" -m pip freeze | sed 's/^/  /'
} > "$OUT/setup.txt"
"$V/ldd-fast" bench --model digits --schedule edm --nfe 6 --backends eager,compile,onnxruntime,triton,cuda_graph,tensorrt \
  --batch 1 8 64 --threads "$THREADS" --json "$OUT/digits.json" --md "$OUT/digits.md" --plot "$OUT/digits.png"
"$V/ldd-fast" bench --model ddpm_folder --schedule edm --nfe 6 --backends eager,compile,onnxruntime \
  --batch 1 8 --threads "$THREADS" --json "$OUT/diffusers.json" --md "$OUT/diffusers.md" --plot "$OUT/diffusers.png"
echo "wrote $OUT"
