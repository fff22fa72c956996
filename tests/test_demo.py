"""``examples/demo.py`` (what ``scripts/demo`` runs) goes end to end on the in-process broker and exits 0."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from helpers_process import REPO_ROOT, app_env


def test_demo_runs_the_seed_example_end_to_end() -> None:
    done = subprocess.run(
        [sys.executable, "examples/demo.py"],
        cwd=REPO_ROOT,
        env=app_env(),  # no OTTER_BROKER_URL: memory://
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "the in-process broker" in output
    assert f"rpc result: {{'result': '{hashlib.sha256(b'otter').hexdigest()}'}}" in output
    assert "Received otter" in output
    assert "Done waiting 5 seconds" in output
    assert output.index("Done waiting 5 seconds") < output.index("all done")
