"""The house's shape, checked: import-linter's layers contract (pyproject.toml), no
import cycle among the package's modules, and no module grown past ~500 lines."""

import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")  # installed with import-linter (the test extra)

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "devicejoblib"


def test_the_layers_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter's lint-imports is not installed beside this Python")
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_import_cycle_among_the_modules():
    graph = grimp.build_graph("devicejoblib")
    modules = sorted(m for m in graph.modules if m.startswith("devicejoblib"))
    cycles = [(a, b) for a in modules for b in graph.find_modules_directly_imported_by(a)
              if b != a and b.startswith("devicejoblib")
              and graph.chain_exists(importer=b, imported=a)]
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.skipif(not PACKAGE.is_dir(), reason="not run from a checkout")
def test_no_module_passes_500_lines():
    lines = {p.relative_to(PACKAGE).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert "__init__.py" in lines, f"no module found under {PACKAGE}"
    long = {name: n for name, n in lines.items() if n > 500}
    assert not long, f"modules to split by responsibility: {long}"
