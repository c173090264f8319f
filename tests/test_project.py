"""The project's own promises: CI runs README's test command, verbatim."""

import re
from pathlib import Path

import pytest

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
