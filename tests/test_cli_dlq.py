"""``otter dlq list|replay|purge``, run as real subprocesses against the real RabbitMQ.

Dead letters are made as in production: an app served on the broker whose task handler raises (TASK_MAX_RETRIES is
0 by default, so a failure goes straight to the dead-letter queue), plus one task whose body is not JSON. The
commands find the broker and the queue names the way an operator's shell would: ``OTTER_*`` variables.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import unique_names
from helpers_process import REPO_ROOT, app_env, wait_until
from otter import Client, Otter
from otter.dlq import list_dead_letters
from otter.testing import ServedApp
from rawbroker import RawBroker


def otter(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m otter ARGS`` with only ``env``'s ``OTTER_*`` variables."""
    return subprocess.run(
        [sys.executable, "-m", "otter", *args],
        env=app_env(env),
        cwd=REPO_ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


class Shop:
    """Two tasks that fail until ``healed`` is set, as before a fix is deployed; records every run."""

    def __init__(self, names: dict[str, Any]) -> None:
        tag = uuid.uuid4().hex[:8]
        self.job, self.other = f"t{tag}.job", f"t{tag}.other"  # task queues are global on a broker
        self.app = Otter(**names)
        self.healed = threading.Event()
        self._runs: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        for name in (self.job, self.other):
            self.app.add_task(name)(self._handler(name))

    def _handler(self, name: str) -> Any:
        def handler(comm: Any, body: Any) -> None:
            with self._lock:
                self._runs.append((name, body))
            if not self.healed.is_set():
                raise LookupError(f"no order {body['order']}")

        return handler

    def runs_of(self, name: str) -> list[Any]:
        with self._lock:
            return [body for task, body in self._runs if task == name]


class Setup:
    """The served shop, its dead letters (oldest first: job 1, job 2, other 3, then the unreadable one on other)
    and the environment that points ``otter`` at them."""

    def __init__(self, url: str, names: dict[str, Any], shop: Shop) -> None:
        self.url, self.names, self.shop = url, names, shop
        self.env = {f"OTTER_{key}": value for key, value in names.items()}
        self.env["OTTER_BROKER_URL"] = url
        self.queue = names["DEAD_LETTER_QUEUE"]

    def letter_count(self) -> int:
        return len(list_dead_letters(self.url, self.names))


@pytest.fixture
def setup(amqp_url: str) -> Iterator[Setup]:
    names = unique_names("dlqcli")
    shop = Shop(names)
    state = Setup(amqp_url, names, shop)
    try:
        with ServedApp(shop.app, amqp_url, **names), Client(amqp_url, **names) as client:
            # One at a time, so the order in the queue is known.
            for count, (task, order) in enumerate([(shop.job, 1), (shop.job, 2), (shop.other, 3)], 1):
                client.task(task, {"order": order})
                wait_until(lambda count=count: state.letter_count() == count, what=f"{count} dead letters")
            with RawBroker.open(amqp_url, names) as raw:
                raw.task(shop.other, b"{not json", content_type="application/json")
            wait_until(lambda: state.letter_count() == 4, what="the unreadable task dead-lettered")
            yield state
    finally:
        with RawBroker.open(amqp_url, names) as raw:
            raw.delete(shop.job, shop.other)


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of each body row of a rich table (rows that span one line each)."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in stdout.splitlines() if line.count("│") >= 7]
    return [row for row in rows if row[0].isdigit()]


def listed(setup: Setup) -> list[dict[str, Any]]:
    result = otter("dlq", "list", "--json", env=setup.env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- help ---------------------------------------------------------------------------------------------------------
def test_dlq_help_explains_the_queue_and_the_config_key_that_names_it() -> None:
    result = otter("dlq", "--help", env={})
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # help wraps lines
    assert "dead-letter queue when its handler raised" in text
    assert "config key DEAD_LETTER_QUEUE" in text and "OTTER_DEAD_LETTER_QUEUE" in text
    for command in ("list", "replay", "purge"):
        assert f" {command} " in text
    top = otter("--help", env={})
    assert " dlq " in " ".join(top.stdout.split())


# -- list -----------------------------------------------------------------------------------------------------------
def test_list_shows_queue_reason_error_attempts_and_body_and_counts_them(setup: Setup) -> None:
    shop = setup.shop
    result = otter("dlq", "list", env=setup.env)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert [row[:5] for row in rows] == [
        ["1", shop.job, "handler-error", "LookupError: no order 1", "1"],
        ["2", shop.job, "handler-error", "LookupError: no order 2", "1"],
        ["3", shop.other, "handler-error", "LookupError: no order 3", "1"],
        ["4", shop.other, "bad-message", rows[3][3], "0"],  # never ran
    ]
    assert rows[3][3].startswith("MessageError: ") and "not valid JSON" in rows[3][3]
    assert rows[0][5] == '{"order":1}'  # the task's body, not kiwipy's [body, no_reply] around it
    assert rows[3][5] == "{not json"
    assert rows[0][6].startswith("test_cli_dlq.py:") and rows[0][6].endswith("in handler")  # where it raised
    assert result.stdout.rstrip().endswith(f"4 dead letters in {setup.queue!r}")
    assert setup.letter_count() == 4  # listing consumed nothing


def test_list_json_and_limit(setup: Setup) -> None:
    letters = listed(setup)
    assert [(letter["queue"], letter["task"], letter["reason"]) for letter in letters] == [
        (setup.shop.job, setup.shop.job, "handler-error"),
        (setup.shop.job, setup.shop.job, "handler-error"),
        (setup.shop.other, setup.shop.other, "handler-error"),
        (setup.shop.other, setup.shop.other, "bad-message"),
    ]
    first = letters[0]
    assert (first["error_type"], first["error_message"], first["attempts"]) == ("LookupError", "no order 1", 1)
    assert first["body_preview"] == '{"order":1}' and first["size"] == len('[{"order":1},true]')
    limited = otter("dlq", "list", "--limit", "1", env=setup.env)
    assert limited.returncode == 0, limited.stderr
    assert [row[0] for row in table_rows(limited.stdout)] == ["1"]
    assert f"1 dead letter in {setup.queue!r} shown (--limit 1: there may be more)" in limited.stdout



def test_show_prints_one_dead_letter_whole(setup: Setup) -> None:
    shop = setup.shop
    big = otter("dlq", "show", "2", env=setup.env)
    assert big.returncode == 0, big.stderr
    lines = big.stdout.splitlines()
    assert lines[0] == f"dead letter 2 in {setup.queue!r}"
    assert f"  queue:          {shop.job}" in lines and "  reason:         handler-error" in lines
    assert "  error_message:  no order 2" in lines and "  attempts:       1" in lines
    assert "    x-otter-reason: handler-error" in lines and f"    x-otter-task: {shop.job}" in lines
    body = lines[lines.index("  body (the task, as its handler gets it):") + 1:]
    assert body == ["    {", '      "order": 2', "    }"]  # whole and pretty, without the [body, no_reply] envelope
    # The handler's traceback, kept in the dead letter: where it raised, whatever DEBUG was.
    trace = lines[lines.index("  traceback (where the handler raised):") + 1:lines.index("  headers:")]
    assert trace[0] == "    Traceback (most recent call last):" and trace[-1] == "    LookupError: no order 2"
    assert any("test_cli_dlq.py" in line or "raise LookupError" in line for line in trace)
    assert not any(line.startswith("    x-otter-error-traceback") for line in lines)  # shown once, above

    as_json = otter("dlq", "show", "1", "--json", env=setup.env)
    assert as_json.returncode == 0, as_json.stderr
    letter = json.loads(as_json.stdout)
    assert (letter["body"], letter["readable"], letter["reason"]) == ({"order": 1}, True, "handler-error")
    assert letter["headers"]["x-otter-error-type"] == "LookupError"

    unreadable = otter("dlq", "show", "4", "--json", env=setup.env)
    letter = json.loads(unreadable.stdout)
    assert (letter["body"], letter["readable"], letter["reason"]) == ("{not json", False, "bad-message")

    missing = otter("dlq", "show", "5", env=setup.env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"no dead letter 5: there are 4 dead letters in {setup.queue!r}"
    assert setup.letter_count() == 4  # showing consumed nothing
    assert otter("dlq", "show", "0", env=setup.env).returncode == 2


def test_list_finds_the_queue_through_otter_dead_letter_queue_alone(setup: Setup) -> None:
    """The dlq commands resolve like ``Client`` (``otter.config.resolve``): only the broker and the queue given, by
    ``OTTER_*`` variables; the exchange names the setup also exported are not needed to read dead letters."""
    env = {"OTTER_BROKER_URL": setup.url, "OTTER_DEAD_LETTER_QUEUE": setup.queue, "OTTER_CONNECT_TIMEOUT": "3"}
    result = otter("dlq", "list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 4
    count = otter("dlq", "list", env=env)
    assert count.stdout.rstrip().endswith(f"4 dead letters in {setup.queue!r}")

# -- replay ---------------------------------------------------------------------------------------------------------
def test_replay_one_letter_of_one_task_runs_it_again_and_leaves_the_rest(setup: Setup) -> None:
    shop = setup.shop
    shop.healed.set()  # the fix is deployed
    result = otter("dlq", "replay", "--task", shop.job, "--limit", "1", env=setup.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"replayed 1 dead letter of {shop.job!r} from {setup.queue!r}"
    wait_until(lambda: shop.runs_of(shop.job) == [{"order": 1}, {"order": 2}, {"order": 1}], what="order 1 rerun")
    remaining = listed(setup)  # order 1 succeeded this time, so it did not come back
    assert [(letter["queue"], letter["body_preview"]) for letter in remaining] == [
        (shop.job, '{"order":2}'),
        (shop.other, '{"order":3}'),
        (shop.other, "{not json"),
    ]
    assert shop.runs_of(shop.job) == [{"order": 1}, {"order": 2}, {"order": 1}]  # exactly one was replayed
    assert shop.runs_of(shop.other) == [{"order": 3}]


def test_replay_by_id_sends_back_exactly_those_letters(setup: Setup) -> None:
    shop = setup.shop
    shop.healed.set()
    letters = listed(setup)
    assert all(letter["task_id"] for letter in letters)  # each dead letter carries its task's id
    wanted = [letters[1]["task_id"], letters[2]["task_id"]]  # order 2 of the job, order 3 of the other
    result = otter("dlq", "replay", "--id", wanted[0], "--id", wanted[1], env=setup.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"replayed 2 dead letters with ids {wanted[0]}, {wanted[1]} from {setup.queue!r}"
    wait_until(lambda: len(shop.runs_of(shop.job)) == 3 and len(shop.runs_of(shop.other)) == 2, what="the reruns")
    assert shop.runs_of(shop.job)[-1] == {"order": 2} and shop.runs_of(shop.other)[-1] == {"order": 3}
    assert [letter["task_id"] for letter in listed(setup)] == [letters[0]["task_id"], letters[3]["task_id"]]
    table = otter("dlq", "list", env=setup.env)
    assert "Task id" in table.stdout and letters[0]["task_id"][:8] in table.stdout


def test_replay_everything_sends_each_letter_back_to_its_own_queue(setup: Setup) -> None:
    shop = setup.shop
    shop.healed.set()
    result = otter("dlq", "replay", "--broker", setup.url, env={**setup.env, "OTTER_BROKER_URL": "memory://unused"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"replayed 4 dead letters from {setup.queue!r}"
    wait_until(lambda: len(shop.runs_of(shop.job)) == 4 and len(shop.runs_of(shop.other)) == 2, what="the reruns")
    assert shop.runs_of(shop.other) == [{"order": 3}, {"order": 3}]
    # The unreadable task is still unreadable: it goes straight back to the dead letters, and only it.
    wait_until(lambda: setup.letter_count() == 1, what="the unreadable task dead-lettered again")
    assert [letter["reason"] for letter in listed(setup)] == ["bad-message"]


# -- purge ----------------------------------------------------------------------------------------------------------
def test_purge_asks_first_and_with_yes_removes_everything(setup: Setup) -> None:
    declined = otter("dlq", "purge", env=setup.env, stdin="n\n")
    assert declined.returncode == 1
    assert f"Delete every dead letter in {setup.queue!r} on amqp://guest:***@" in declined.stderr
    assert "guest:guest@" not in declined.stderr
    assert setup.letter_count() == 4

    confirmed = otter("dlq", "purge", env=setup.env, stdin="y\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert confirmed.stdout.strip() == f"removed 4 dead letters from {setup.queue!r}"

    again = otter("dlq", "purge", "--yes", env=setup.env)  # no prompt: stdin is empty
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"removed 0 dead letters from {setup.queue!r}"
    empty = otter("dlq", "list", env=setup.env)
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip() == f"0 dead letters in {setup.queue!r}"
    assert listed(setup) == []


# -- errors ---------------------------------------------------------------------------------------------------------
def test_dlq_exits_4_when_the_broker_cannot_be_reached_and_2_on_a_bad_limit() -> None:
    env = {f"OTTER_{key}": value for key, value in unique_names("dlqcli").items()}
    for command in (["list"], ["replay"], ["purge", "--yes"]):
        result = otter("dlq", *command, "--broker", "amqp://guest:guest@127.0.0.1:1/", env=env)
        assert result.returncode == 4, (command, result.stderr)
        assert result.stderr.startswith("BrokerUnavailable: ")
        assert "Traceback" not in result.stderr
        assert "guest:guest@" not in result.stderr and "guest:***@" in result.stderr
    bad = otter("dlq", "replay", "--limit", "-1", env=env)
    assert bad.returncode == 2
    assert "--limit" in bad.stderr


def test_without_a_broker_it_exits_2_saying_how_to_name_one() -> None:
    for command in (["list"], ["replay"], ["purge", "--yes"]):
        result = otter("dlq", *command, env={"OTTER_BROKER_URL": ""})
        assert result.returncode == 2, (command, result.stderr)
        assert "no broker given: name it with --broker amqp://" in result.stderr
        assert "or set OTTER_BROKER_URL" in result.stderr
        assert result.stdout == ""


def test_memory_named_on_purpose_warns_that_it_holds_no_dead_letters() -> None:
    result = otter("dlq", "list", "--broker", "memory://", env={})
    assert result.returncode == 0, result.stderr
    assert "warning: memory:// is a broker inside this process" in result.stderr
    assert "use --broker amqp://... or OTTER_BROKER_URL" in result.stderr
    assert result.stdout.strip() == "0 dead letters in 'otter.dead-letter'"
