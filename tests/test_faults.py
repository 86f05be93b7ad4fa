"""The fault-injection script (tests/fault_injection.py) in the test suite, with fewer SIGKILL trials;
.ci/run runs it in full (20 trials) and prints its table."""

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_fault_injection_table_is_all_green(tmp_path):
    script = Path(__file__).with_name("fault_injection.py")
    r = subprocess.run([sys.executable, str(script), "--trials", "2", "--workdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "8 passed, 0 failed" in r.stdout and "FAILED" not in r.stdout
