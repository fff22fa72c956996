"""A user the broker lets in but gives no permissions on the vhost: one line naming the fix, exit 4, not waited for.

On the private node, where a test may create users (the shared broker's users are left alone)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from helpers_process import REPO_ROOT, app_env

from .rabbitmq_node import PrivateRabbitMQ

pytestmark = pytest.mark.faults


def test_a_user_without_permissions_on_the_vhost_is_told_how_to_grant_them(private_broker: PrivateRabbitMQ) -> None:
    user, password = f"noperm-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    private_broker.ctl("add_user", user, password)
    try:
        url = f"amqp://{user}:{password}@127.0.0.1:{private_broker.port}/"
        for args, env in ((["call", "--broker", url, "svc.x", "1"], {}),
                          (["run", "examples.app:app"], {"OTTER_BROKER_URL": url, "OTTER_STARTUP_WAIT": "60"})):
            result = subprocess.run([sys.executable, "-m", "otter", *args], cwd=REPO_ROOT, env=app_env(env),
                                    text=True, capture_output=True, timeout=30)
            assert result.returncode == 4, result.stderr
            assert f"user {user!r} may not use the virtual host '/'" in result.stderr
            assert f"rabbitmqctl set_permissions -p / {user}" in result.stderr
            assert "Traceback" not in result.stderr and "trying again" not in result.stderr
            assert password not in result.stderr
    finally:
        private_broker.ctl("delete_user", user)
