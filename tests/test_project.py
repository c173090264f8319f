"""The project's own promises: CI runs README's test command, verbatim, then the tests
with the lowest joblib that pyproject.toml allows."""

import re
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).parent.parent


def _bash_blocks(path):
    return re.findall(r"```bash\n(.*?)\n```", path.read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command():
    if not (ROOT / ".ci" / "run").exists():
        pytest.skip("not run from a checkout")
    test_commands = [b for b in _bash_blocks(ROOT / "README.md") if "pytest" in b]
    assert len(test_commands) == 1, test_commands
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_commands[0] in ci_lines


def test_ci_tests_the_lowest_joblib_pyproject_allows():
    if not (ROOT / ".ci" / "run").exists():
        pytest.skip("not run from a checkout")
    ci = (ROOT / ".ci" / "run").read_text()
    lowest = re.search(r"^LOWEST_JOBLIB=(\S+)$", ci, flags=re.M)
    bound = re.search(r'"joblib>=([^,"]+)[,"]', (ROOT / "pyproject.toml").read_text())
    assert lowest and bound, "LOWEST_JOBLIB in .ci/run or joblib's lower bound not found"
    assert Version(lowest[1]) == Version(bound[1])
    assert '.venv/bin/pip install "joblib==$LOWEST_JOBLIB"' in ci
