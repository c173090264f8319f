"""The repository's layout: the top-level kernels/ folder is ``devicejoblib.kernels``,
importable under that one name from a checkout (``PYTHONPATH=src``) and from a wheel."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
PACKAGE = ROOT / "src" / "devicejoblib"
REFUSAL = "import it as 'devicejoblib.kernels'"
REFUSAL_CHECK = b'if __name__ != "devicejoblib.kernels":'

pytestmark = pytest.mark.skipif(
    not ((ROOT / "pyproject.toml").is_file() and (PACKAGE / "kernels" / "__init__.py").is_file()),
    reason="not run from a checkout")

# Run with PYTHONPATH=src and no site-packages (-S: neither the editable install's .pth nor
# its import hook), as a GPU machine runs a checkout.
CHECKOUT_PROBE = """
import json, sys
import numpy as np
from devicejoblib import Parallel, delayed
import devicejoblib.kernels.mlp as mlp
from devicejoblib.kernels import saxpy

out = Parallel(n_jobs=2, backend="loky")(delayed(saxpy)(2.0, np.ones(3), np.ones(3))
                                         for _ in range(2))
print(json.dumps({
    "mlp": mlp.__file__,
    "devicejoblib": sys.modules["devicejoblib"].__file__,
    "top_level": sorted(m for m in sys.modules if m.partition(".")[0] == "kernels"),
    "out": [float(v) for v in out[1]],
}))
"""


def _source_files(folder):
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.py")
            if "__pycache__" not in p.parts}


def test_kernels_is_a_real_folder():
    assert KERNELS.is_dir() and not KERNELS.is_symlink()
    assert (KERNELS / "__init__.py").is_file() and not (KERNELS / "__init__.py").is_symlink()


def test_kernels_refuses_its_top_level_name():
    proc = subprocess.run([sys.executable, "-c", "import kernels"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and REFUSAL in proc.stderr, proc.stderr


def test_checkout_imports_kernels_from_the_folder_under_one_name(tmp_path):
    numpy = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    path = [str(ROOT / "src"), *{str(Path(m.__file__).parent.parent) for m in (numpy, joblib)}]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(path)
    proc = subprocess.run([sys.executable, "-S", "-c", CHECKOUT_PROBE], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert Path(seen["devicejoblib"]).parent == PACKAGE
    assert Path(seen["mlp"]).parent == KERNELS
    assert seen["top_level"] == []
    assert seen["out"] == [3.0, 3.0, 3.0]


def test_wheel_ships_the_kernels_folder_not_the_checkout_stand_in(tmp_path):
    pytest.importorskip("setuptools", minversion="77")
    # A copy, so that the build neither writes build/ into the checkout nor packs stale
    # files from an earlier build/ there.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "site", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("devicejoblib-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = set(zf.namelist())
        init = zf.read("devicejoblib/kernels/__init__.py")
    kernels = {f"devicejoblib/kernels/{name}" for name in _source_files(KERNELS)}
    library = {f"devicejoblib/{name}" for name in _source_files(PACKAGE)
               if not name.startswith("kernels/")}
    assert "devicejoblib/kernels/__init__.py" in kernels and "devicejoblib/__init__.py" in library
    assert not kernels - shipped, f"missing from the wheel: {sorted(kernels - shipped)}"
    assert not library - shipped, (
        f"missing from the wheel: {sorted(library - shipped)}: list new subpackages in "
        "pyproject.toml's [tool.setuptools] packages")
    assert init == (KERNELS / "__init__.py").read_bytes()
    assert REFUSAL_CHECK in init
