"""``otter docs``, run as a real subprocess: the document on stdout or in a file, errors with their exit codes, and
``--serve``'s page over HTTP (bound to 127.0.0.1, nothing fetched from elsewhere)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from helpers_process import REPO_ROOT, AppProcess, app_env

APP = "tests/apps/asyncapi_app.py"
SCHEMA = json.loads((Path(__file__).parent / "data" / "asyncapi-3.0.0-without-$id.json").read_text())


def otter_docs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otter", "docs", *args], env=app_env(env), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_prints_a_valid_document_as_yaml_by_default_and_as_json() -> None:
    as_yaml = otter_docs(APP)
    assert as_yaml.returncode == 0, as_yaml.stderr
    doc = yaml.safe_load(as_yaml.stdout)
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(doc)) == []
    assert {"rpc.orders.place", "task.mail.send", "broadcast.on_order_event", "rpc.accounts.login"} <= set(
        doc["operations"])
    as_json = otter_docs(APP, "--format", "json", "--app-version", "2.1.0")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["info"]["version"] == "2.1.0"
    assert {**json.loads(as_json.stdout), "info": doc["info"]} == doc


def test_writes_a_file_and_takes_the_broker_and_names_from_options_and_env(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    result = otter_docs(APP, "-f", "json", "-o", str(out), "--broker", "amqps://u:pw@mq.example:5671/v",
                        env={"OTTER_MESSAGE_EXCHANGE": "env.messages"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and str(out) in result.stderr
    doc = json.loads(out.read_text())
    assert doc["servers"]["broker"]["host"] == "mq.example:5671" and "pw" not in out.read_text()
    assert doc["channels"]["rpc.echo"]["bindings"]["amqp"]["exchange"]["name"] == "env.messages"


def test_bad_input_exits_with_a_clear_error(tmp_path: Path) -> None:
    missing = otter_docs("tests/apps/no_such_app.py")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    raised = otter_docs(str(broken))
    assert raised.returncode == 1 and "RuntimeError: boom at import" in raised.stderr
    bad_config = otter_docs(APP, env={"OTTER_TASK_QUEUE_TYPE": "stream"})
    assert bad_config.returncode == 2 and "TASK_QUEUE_TYPE" in bad_config.stderr
    bad_format = otter_docs(APP, "--format", "xml")
    assert bad_format.returncode == 2 and "xml" in bad_format.stderr


def test_an_app_with_schemas_but_no_apispec_names_the_extra(tmp_path: Path) -> None:
    blocker = tmp_path / "sitecustomize.py"  # runs first in the child: apispec cannot be imported there
    blocker.write_text("import sys\nsys.modules['apispec'] = None\n")
    result = otter_docs(APP, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1
    assert "needs apispec" in result.stderr and "pip install 'otter-mq[docs]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_renders_the_page_offline_on_localhost() -> None:
    with AppProcess("-m", "otter", "docs", APP, "--serve", "--port", "0") as server:
        server.wait_for("(Ctrl-C to stop)", timeout=30)
        url = re.search(r"http://127\.0\.0\.1:\d+/", server.output)
        assert url, server.output
        with urllib.request.urlopen(url.group(0), timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/html")
            page = response.read().decode()
        for title in ("Serve the RPC orders.place", "Run the task mail.send", "Receive broadcasts matching orders.*",
                      "Serve the RPC accounts.login", "<code>[rpc].orders.place</code>", 'id="schema-Address"'):
            assert title in page
        links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page, flags=re.IGNORECASE)
        assert links and not [link for link in links if re.match(r"(?:[a-z]+:)?//", link)], links
        assert "<script" not in page.lower()
        with urllib.request.urlopen(url.group(0) + "asyncapi.json", timeout=10) as response:
            served = json.loads(response.read())
        assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(served)) == []
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url.group(0) + "nothing", timeout=10)
        missing.value.close()  # its response's socket, else a ResourceWarning fails whichever test runs next
        assert missing.value.code == 404
        assert server.stop(signal.SIGTERM) == 0


def test_serve_on_a_port_in_use_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = otter_docs(APP, "--serve", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
