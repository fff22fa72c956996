"""The pytest plugin (``otter.testing``, registered by the ``pytest11`` entry point), used the way a user would:
``pytester`` writes a user's test module and runs pytest on it, with warnings as errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rawbroker import RawBroker

pytest_plugins = ["pytester"]

USER_TESTS = """
import json
import pytest
from otter import Otter

@pytest.fixture
def app():
    app = Otter("plugin-demo")

    @app.add_rpc("demo.double")
    def double(comm, n):
        return n * 2

    return app

def test_against_the_in_memory_broker(otter_client):
    assert otter_client.url.startswith("memory://")
    assert otter_client.rpc("demo.double", 21).result(5) == 42

def test_against_rabbitmq(otter_worker, otter_broker_url):
    assert otter_worker.url.startswith(("amqp://", "amqps://"))
    assert otter_worker.rpc("demo.double", 4).result(5) == 8
    names = {key: otter_worker.config[key] for key in ("MESSAGE_EXCHANGE", "TASK_EXCHANGE", "DEFAULT_TASK_QUEUE")}
    with open("names.json", "w") as out:
        json.dump(names, out)
"""


@pytest.fixture
def user_project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\nfilterwarnings =\n    error\n")
    return pytester


@pytest.mark.amqp
def test_fixtures_serve_the_users_app_in_memory_and_on_rabbitmq(user_project: pytest.Pytester, amqp_url: str) -> None:
    user_project.makepyfile(test_service=USER_TESTS)
    result = user_project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    names = json.loads(Path(user_project.path, "names.json").read_text())
    assert names["MESSAGE_EXCHANGE"] != "kiwipy.messages"  # unique to the test, not the shared defaults
    # and removed afterwards: the broker keeps nothing of the test
    with RawBroker.open(amqp_url) as raw:
        assert not raw.exchange_exists(names["MESSAGE_EXCHANGE"])
        assert not raw.exchange_exists(names["TASK_EXCHANGE"])
        assert raw.depth(names["DEFAULT_TASK_QUEUE"]) is None  # no such queue


def test_a_missing_or_wrong_app_fixture_is_explained(user_project: pytest.Pytester) -> None:
    user_project.makepyfile(
        test_forgot="def test_it(otter_client):\n    pass\n",
        test_wrong="import pytest\n\n@pytest.fixture\ndef app():\n    return 'not an app'\n\n"
        "def test_it(otter_worker):\n    pass\n",
    )
    result = user_project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*define a fixture named 'app' that returns it*"])
    result.stdout.fnmatch_lines(["*the 'app' fixture returned 'not an app', not an otter.Otter app*"])


def test_the_plugin_is_registered_by_its_entry_point(user_project: pytest.Pytester) -> None:
    result = user_project.runpytest("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*otter_client*", "*otter_worker*"])
    result.stdout.fnmatch_lines(["*otter.testing*"])
