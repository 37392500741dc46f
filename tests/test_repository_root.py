"""A Python started at the repository root sees the installed packages, not the checkout's folders.

transformers 5 installs a package named `kernels`; while the root `kernels/` folder was a regular
package, `python` or `python -m pytest` started at the root imported ours instead, and diffusers'
UNet2DConditionModel (through peft's loaders) failed. The root folders `kernels/` and `export/` hold
no `__init__.py`: a folder without one is a namespace portion, which Python uses only when no
regular package of that name is installed anywhere on the path.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run with the root as the current folder, as `python -c` / `python -m pytest` there would be.
PROBE = r"""
import importlib.util, json, os, sys
root = os.path.abspath(sys.argv[1])
report = {"shadowed": [], "path0": os.path.abspath(sys.path[0] or os.getcwd())}
for name in sorted(os.listdir(root)):
    if not os.path.isdir(os.path.join(root, name)) or not name.isidentifier() or name == "ldd_fast":
        continue
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin is not None and os.path.abspath(spec.origin).startswith(root + os.sep):
        report["shadowed"].append([name, spec.origin])
installed = importlib.util.find_spec("kernels")
report["kernels"] = None if installed is None else installed.origin
import ldd_fast, ldd_fast.export, ldd_fast.kernels
from ldd_fast.export import to_onnx
from ldd_fast.kernels import fused_update
report["ldd_fast"] = ldd_fast.__file__
try:
    import diffusers
except ImportError:
    report["diffusers"] = None
else:
    from ldd_fast.cli import DIFFUSERS_NETWORKS
    from ldd_fast.pipelines import PIPELINES
    for cls in (*DIFFUSERS_NETWORKS, *PIPELINES):
        getattr(diffusers, cls)  # diffusers imports lazily: this is where `kernels` was taken from the root
    report["diffusers"] = sorted((*DIFFUSERS_NETWORKS, *PIPELINES))
print(json.dumps(report))
"""


def test_python_at_the_root_imports_installed_packages_and_every_loaded_class():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = subprocess.run([sys.executable, "-c", PROBE, ROOT], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["path0"] == ROOT  # the probe really had the root first on its path
    assert report["shadowed"] == [], f"root folders taken for packages: {report['shadowed']}"
    if report["kernels"] is not None:  # the `kernels` package (transformers 5) is installed: it must win
        assert not os.path.abspath(report["kernels"]).startswith(ROOT + os.sep), report["kernels"]
    assert report["ldd_fast"].startswith(os.path.join(ROOT, "ldd_fast"))


def test_no_root_folder_but_the_package_is_a_regular_package():
    """The static twin of the probe: a regular package at the root would shadow an installed namesake."""
    packages = [name for name in os.listdir(ROOT)
                if os.path.isfile(os.path.join(ROOT, name, "__init__.py")) and name != "ldd_fast"]
    assert packages == []
