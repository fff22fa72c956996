"""One way to send a named task, everywhere: ``task_target`` and the communicator's own ``task``."""

from __future__ import annotations

from typing import Any

import pytest

from otter.comm import task_target


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        pytest.param(("billing.charge", {"n": 1}), {}, ("billing.charge", {"n": 1}), id="task(name, body)"),
        pytest.param(("billing.charge",), {}, ("billing.charge", None), id="task(name): a lone string is a name"),
        pytest.param((5,), {}, (None, 5), id="the seed's task(5): nameless"),
        pytest.param(({"a": 1},), {}, (None, {"a": 1}), id="a lone non-string body: nameless"),
        pytest.param((), {"body": "text"}, (None, "text"), id="task(body=...): nameless, any body"),
        pytest.param(("mail.send",), {"body": None}, ("mail.send", None), id="task(name, body=...)"),
        pytest.param(("x.y", None), {}, ("x.y", None), id="an explicit None body"),
    ],
)
def test_where_a_task_call_goes(args: tuple[Any, ...], kwargs: dict[str, Any], expected: tuple[Any, Any]) -> None:
    assert task_target(args, dict(kwargs)) == expected


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        pytest.param((), {}, "task\\(name, body\\)", id="nothing"),
        pytest.param((1, 2), {}, "name is a string", id="a name that is not a string"),
        pytest.param(("a", 1), {"body": 2}, "body twice", id="two bodies"),
        pytest.param((), {"bdy": 1}, "unexpected keyword", id="a misspelt keyword"),
        pytest.param((1, 2, 3), {}, "task\\(name, body\\)", id="three arguments"),
    ],
)
def test_a_task_call_that_means_nothing_says_how_to_write_it(
    args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        task_target(args, dict(kwargs))
