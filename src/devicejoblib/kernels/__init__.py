"""devicejoblib.kernels in a checkout: the package's files are in the top-level kernels/."""

# A checkout has no build step to map the repository's top-level kernels/ folder onto
# devicejoblib.kernels (a wheel does, through pyproject.toml's package-dir, and never
# ships this file), so with PYTHONPATH=src, or an editable install that resolves through
# src/, this file stands in: submodules are found in that folder, and its __init__.py runs
# here as this package's own.
from pathlib import Path as _Path

_init = _Path(__file__).resolve().parents[3] / "kernels" / "__init__.py"
if not _init.is_file():
    raise ImportError(f"devicejoblib.kernels: {_init} is missing; this file only points at "
                      "the checkout's top-level kernels/ folder (use a whole checkout, or "
                      "pip install the project)")
__path__ = [str(_init.parent)]
__file__ = str(_init)
exec(compile(_init.read_text(encoding="utf-8"), __file__, "exec"))
del _Path, _init
