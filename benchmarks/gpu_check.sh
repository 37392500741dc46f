#!/usr/bin/env bash
# One GPU check in at most 5 minutes: install, the GPU tests, the update-kernel bandwidth and the
# sampler latency benchmarks, each under its own timeout, then one archive of everything they wrote.
#
#   bash benchmarks/gpu_check.sh                run from anywhere on the lent GPU machine
#   bash benchmarks/gpu_check.sh --dry-run      any machine, no GPU: prints every section's command
#                                               and runs its argument check (CI runs this)
#   bash benchmarks/gpu_check.sh --pack-wheels  on a development machine that has diffusers: writes
#                                               .whl/ (git-ignored) for the run tool to carry
#
# The lent machine has its own Python 3.12, torch 2.11, triton 3.6 and onnxruntime, no diffusers and
# no network. The project installs with `pip install --no-deps --no-build-isolation -e .`; diffusers
# and the pure-Python packages it imports travel as wheels in .whl/ (--pack-wheels; carry ".whl").
# Pillow has C extensions built for the packing machine's Python, so it is not packed: when the GPU
# machine cannot `import PIL.Image`, a stub PIL (.whl/shims, enough for diffusers' import-time
# references; it cannot open images, which no UNet forward needs) goes on PYTHONPATH. Without .whl/
# the CIFAR- and SD-size rows are skipped with the import error recorded, the rest still runs.
#
# Sections and budgets (seconds; the whole run stops at 290):
#   setup 25, tests 60, update_kernel 40, latency 75, latency_compile 35, bench 25, plan 30
# bench: `ldd-fast bench` (the package's lf.bench) on the built-in model with the committed LD3 schedule;
# plan: `ldd-fast plan` with hand-made schedules only (no learning on the lent machine).
# Output: $OUT/gpu_check_<stamp>.tar.gz (OUT defaults to benchmarks/results) with the logs, the
# junit report, the environment and benchmarks/results/{update_kernel,latency,bench,plan}.cuda*.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE=run
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --pack-wheels) MODE=pack ;;
  "") ;;
  *) echo "usage: $0 [--dry-run | --pack-wheels]" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
TOTAL=${GPU_CHECK_TOTAL:-290}  # seconds for the whole run (override only to test the script)
START=$(date +%s)
STAMP=$(date +%Y%m%d_%H%M%S)
DEST="${OUT:-$ROOT/benchmarks/results}"
WORK="$(mktemp -d /tmp/gpu_check.XXXXXX)"
SUMMARY="$WORK/summary.txt"
: > "$SUMMARY"

# --- the sections' commands (one place, shared by the run and the dry run) --------------------------
TESTS=(-m pytest -q -rs tests/test_kernels.py tests/test_sampler.py)
UPDATE=(benchmarks/update_kernel.py --repeats 10 --compile-min-log2 24 --blocks 1024 4096)
LATENCY=(benchmarks/latency.py --preset gpu_check)
LATENCY_COMPILE=(benchmarks/latency.py --models cifar --backends compile --batches 1 --nfe 4 --repeats 10
                 --name latency.cuda.compile)
BENCH=(-m ldd_fast.cli bench --model digits --schedule benchmarks/results/ld3/digits/unipc3-bh2_nfe4/schedule.json edm
       --nfe 4 --backends eager,triton,cuda_graph --batch 1 64 --repeats 10 --device cuda --threads 1
       --json benchmarks/results/bench.cuda.json --md benchmarks/results/bench.cuda.md)
PLAN=(-m ldd_fast.cli plan --model digits --budget-ms 10 --batch 64 --backends eager,triton,cuda_graph --device cuda
      --threads 1 --n-select 32 --n-eval 64 --teacher-steps 20 --repeats 5 --out benchmarks/results/plan.cuda)

section() {  # section NAME BUDGET CMD... : run CMD under min(BUDGET, time left), log to $WORK/NAME.log
  local name=$1 budget=$2; shift 2
  local left=$(( TOTAL - ($(date +%s) - START) ))
  local limit=$(( budget < left ? budget : left ))
  echo "[$name] (${limit}s) $*"
  if (( limit <= 5 )); then
    echo "$name: skipped, no time left" | tee -a "$SUMMARY"
    return
  fi
  local t0=$(date +%s)
  timeout --signal=TERM --kill-after=5 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  local msg="rc=$rc"
  (( rc == 124 || rc == 137 )) && msg="TIMED OUT after ${limit}s"
  echo "$name: $msg ($(( $(date +%s) - t0 ))s)" | tee -a "$SUMMARY"
  tail -n 5 "$WORK/$name.log"
}

pack_wheels() {  # wheels of the installed pure-Python packages diffusers needs, plus the PIL stub
  mkdir -p .whl/shims/PIL
  "$PY" - <<'EOF'
import base64, hashlib, importlib.metadata as md, os, re, zipfile

# diffusers' import-time closure on a machine that has torch, numpy, filelock, fsspec, packaging,
# typing_extensions and jinja2 (torch's own dependencies), found by importing diffusers with only those.
DISTS = ["diffusers", "huggingface_hub", "requests", "tqdm", "httpx2", "httpcore2", "h11", "idna", "truststore",
         "urllib3", "certifi", "PyYAML", "safetensors"]
SKIP_DIST_INFO = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
os.makedirs(".whl", exist_ok=True)
for name in DISTS:
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        print(f"  {name}: not installed here, not packed")
        continue
    info = f"{re.sub('[-.]+', '_', dist.metadata['Name'])}-{dist.version}.dist-info"
    tags = [l.split(": ", 1)[1] for l in dist.read_text("WHEEL").splitlines() if l.startswith("Tag: ")]
    files, dropped = [], False
    for f in dist.files or []:
        s = str(f)
        if "__pycache__" in s or s.endswith(".pyc") or s.startswith(("..", "/")) or ".dist-info/" in s:
            continue
        if re.search(r"\.cpython-\d+[^/]*\.so$", s):  # built for this Python only: PyYAML falls back to pure
            dropped = True
            continue
        files.append(f)
    tag = "py3-none-any" if dropped or all(t.endswith("none-any") for t in tags) else tags[0]
    out = f".whl/{re.sub('[-.]+', '_', dist.metadata['Name'])}-{dist.version}-{tag}.whl"
    record = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        def add(arc, data):
            z.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")
        for f in files:
            add(str(f), f.locate().read_bytes())
        add(f"{info}/METADATA", dist.read_text("METADATA").encode())
        add(f"{info}/WHEEL", (f"Wheel-Version: 1.0\nGenerator: ldd-fast gpu_check.sh\n"
                              f"Root-Is-Purelib: {'true' if tag == 'py3-none-any' else 'false'}\nTag: {tag}\n").encode())
        for extra in ("entry_points.txt", "top_level.txt"):
            text = dist.read_text(extra)
            if text:
                add(f"{info}/{extra}", text.encode())
        z.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    print(f"  {out} ({os.path.getsize(out) / 2**20:.1f} MiB)")

# A stub of what diffusers touches of Pillow at import time.
stub = {
    "__init__.py": '"""Stub Pillow for gpu_check.sh: import-time names only; it cannot open images."""\n'
                   '__version__ = "10.0.0"\n',
    "Image.py": "import enum\n\n\nclass Resampling(enum.IntEnum):\n    NEAREST = 0\n    LANCZOS = 1\n"
                "    BILINEAR = 2\n    BICUBIC = 3\n    BOX = 4\n    HAMMING = 5\n\n\n"
                "NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING = tuple(Resampling)\n\n\nclass Image:\n    pass\n\n\n"
                "def _unavailable(*args, **kwargs):\n    raise ImportError('the PIL stub of gpu_check.sh cannot handle images')\n\n\n"
                "open = fromarray = new = _unavailable\n",
    "ImageOps.py": "", "ImageFilter.py": "", "ImageDraw.py": "", "ImageFont.py": "",
}
for fname, text in stub.items():
    with open(os.path.join(".whl/shims/PIL", fname), "w") as f:
        f.write(text)
print("  .whl/shims/PIL (stub)")
EOF
  du -sh .whl
}

if [[ $MODE == pack ]]; then
  pack_wheels
  exit $?
fi

if [[ $MODE == dry ]]; then
  # Every command with its own argument check; nothing is installed, timed or written.
  fail=0
  echo "[setup] $PY -m pip install --no-deps --no-build-isolation -e . ; pip install --no-deps --no-index .whl/*.whl"
  echo "[tests] $PY ${TESTS[*]} (collection only)"
  "$PY" "${TESTS[@]}" --collect-only -p no:cacheprovider > "$WORK/tests.log" 2>&1 || { fail=1; tail -20 "$WORK/tests.log"; }
  echo "[update_kernel] $PY ${UPDATE[*]}"
  "$PY" "${UPDATE[@]}" --dry-run || fail=1
  echo "[latency] $PY ${LATENCY[*]}"
  "$PY" "${LATENCY[@]}" --dry-run > "$WORK/latency.log" 2>&1 || { fail=1; cat "$WORK/latency.log"; }
  head -1 "$WORK/latency.log"
  echo "[latency_compile] $PY ${LATENCY_COMPILE[*]}"
  "$PY" "${LATENCY_COMPILE[@]}" --dry-run > "$WORK/latency_compile.log" 2>&1 || { fail=1; cat "$WORK/latency_compile.log"; }
  head -1 "$WORK/latency_compile.log"
  for cmd in BENCH PLAN; do  # parse_args checks every argument without loading or running anything
    declare -n args=$cmd
    echo "[${cmd,,}] $PY ${args[*]}"
    "$PY" -c "import sys; from ldd_fast.cli import parse_args; parse_args(sys.argv[2:])" "${args[@]:1}" || fail=1
  done
  echo "[archive] tar -czf $DEST/gpu_check_$STAMP.tar.gz -C $WORK . benchmarks/results/{update_kernel,latency,bench,plan}.cuda*"
  rm -rf "$WORK"
  exit $fail
fi

# --- the run ----------------------------------------------------------------------------------------
export TRITON_INTERPRET=0          # compiled kernels (tests/conftest.py only sets a default of 1)
export TRITON_DEFAULT_FP_FUSION=1  # Triton >= 3.9 warns without it; 1 keeps today's default
{
  date; nvidia-smi 2>&1 | head -15
  "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$PY" -c "import triton; print('triton', triton.__version__)"
} > "$WORK/environment.txt" 2>&1

# `timeout` runs programs, not shell functions: the setup steps go through bash -c ($0 is the python).
SETUP='set -e
"$0" -m pip install --no-deps --no-build-isolation -e .
if compgen -G ".whl/*.whl" > /dev/null; then "$0" -m pip install --no-deps --no-index .whl/*.whl; fi
"$0" -c "import ldd_fast.kernels"'
section setup 25 bash -c "$SETUP" "$PY"
if ! "$PY" -c "import PIL.Image" > /dev/null 2>&1 && [[ -d .whl/shims ]]; then
  export PYTHONPATH="$ROOT/.whl/shims${PYTHONPATH:+:$PYTHONPATH}"
  echo "PIL stub on PYTHONPATH" | tee -a "$SUMMARY"
fi
"$PY" -c "import diffusers; print('diffusers', diffusers.__version__)" >> "$WORK/environment.txt" 2>&1

section tests 60 "$PY" "${TESTS[@]}" --junitxml="$WORK/tests.xml" -p no:cacheprovider
section update_kernel 40 "$PY" "${UPDATE[@]}"
section latency 75 "$PY" "${LATENCY[@]}"
section latency_compile 35 "$PY" "${LATENCY_COMPILE[@]}"
section bench 25 "$PY" "${BENCH[@]}"
section plan 30 "$PY" "${PLAN[@]}"

mkdir -p "$WORK/results" "$DEST"
cp -r benchmarks/results/update_kernel.cuda* benchmarks/results/latency.cuda* benchmarks/results/bench.cuda* \
  benchmarks/results/plan.cuda "$WORK/results/" 2>/dev/null
echo "total: $(( $(date +%s) - START ))s" | tee -a "$SUMMARY"
ARCHIVE="$DEST/gpu_check_$STAMP.tar.gz"
tar -czf "$ARCHIVE" -C "$WORK" . && echo "[archive] $ARCHIVE"
cat "$SUMMARY"
rm -rf "$WORK"
