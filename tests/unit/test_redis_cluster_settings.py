"""REDIS_CLUSTER and redis+cluster:// URLs: validated once, at start-up."""

from __future__ import annotations

import pytest

from infrastructure.settings import SettingsError, load_settings, redis_cluster_startup


def test_a_single_redis_is_the_default() -> None:
    assert load_settings({}).redis_cluster_mode is False
    assert load_settings({"REDIS_URL": "redis://cache:6379/2"}).redis_cluster_mode is False


def test_redis_cluster_true_takes_a_plain_url_as_one_startup_node() -> None:
    s = load_settings({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://node-1:7000/0"})
    assert s.redis_cluster_mode is True
    assert redis_cluster_startup(s.redis_url.get_secret_value()) == (
        "redis://node-1:7000/0",
        [("node-1", 7000)],
    )


def test_a_cluster_url_names_several_startup_nodes_and_keeps_its_password_secret() -> None:
    url = "rediss+cluster://app:s3cret@node-1:7000,node-2:7001,[::1]:7002/0?ssl_cert_reqs=none"
    s = load_settings({"REDIS_URL": url})
    assert s.redis_cluster_mode is True
    plain, nodes = redis_cluster_startup(url)
    assert plain == "rediss://app:s3cret@node-1:7000/0?ssl_cert_reqs=none"
    assert nodes == [("node-1", 7000), ("node-2", 7001), ("::1", 7002)]
    assert "s3cret" not in str(s.redacted()) and "s3cret" in s.secrets()
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": "redis+cluster://node-1:70x0/0"}, "is not host:port"),
        ({"REDIS_URL": "redis+cluster://node-1:7000/3"}, "only database 0"),
        ({"REDIS_URL": "redis+cluster://node-1:7000,/0"}, "is not host:port"),
        ({"REDIS_CLUSTER": "true", "REDIS_URL": "unix:///run/redis.sock"}, "over TCP"),
        ({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://node-1:7000/1"}, "only database 0"),
        ({"REDIS_CLUSTER": "maybe"}, "valid boolean"),
    ],
)
def test_a_bad_cluster_setting_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(env)
    text = str(raised.value)
    assert text.startswith(("REDIS_URL:", "REDIS_CLUSTER:")) and message in text
