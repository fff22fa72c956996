"""``import otter`` stays fast (the budget is 150 ms): it loads none of the heavy libraries that only some uses need.
Checked by which modules get imported, not by the clock, so a busy machine cannot make it flaky."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("aio_pika", "aiormq", "pamqp", "kiwipy.rmq", "marshmallow", "click", "rich", "watchfiles", "apispec", "yaml",
         "prometheus_client")


def test_import_otter_loads_no_heavy_library() -> None:
    code = "import sys, json, otter; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    assert [name for name in loaded if name.split(".")[0] in HEAVY or name in HEAVY] == []


def test_the_heavy_libraries_come_when_used() -> None:
    code = ("import sys, otter\nfrom otter.decorators import use_args\nuse_args({})\n"
            "otter.Otter().test_client().close()\nprint('marshmallow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"
