"""The one way to build a Redis client from the settings: one server or a Redis Cluster.

Cluster mode is chosen by ``REDIS_CLUSTER=true`` or by a ``redis+cluster://``
(``rediss+cluster://``) URL, which may name several start-up nodes:
``redis+cluster://[user:password@]host1:6379,host2:6379/0``. The client learns
the rest of the cluster from any node that answers (redis-py's ``RedisCluster``).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from infrastructure.settings import Settings, redis_cluster_startup

Client = redis.Redis | RedisCluster


def connect(settings: Settings, **options: Any) -> Client:
    """A Redis client for the read model; every call bounded by the socket timeouts.

    A silent Redis (or a connection stranded by a failover) raises
    redis.TimeoutError within REDIS_SOCKET_TIMEOUT_SECONDS; the call is retried
    on a fresh connection, then the caller's transient handling takes over.
    ``options``: more of redis-py's connection options (e.g. ``client_name``).
    """
    url = settings.redis_url.get_secret_value()
    bounds: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "socket_connect_timeout": settings.redis_connect_timeout_seconds,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=2),
        **options,
    }
    if settings.redis_cluster_mode:
        plain, nodes = redis_cluster_startup(url)
        try:
            return RedisCluster.from_url(
                plain,
                startup_nodes=[ClusterNode(h, p) for h, p in nodes[1:]],  # type: ignore[no-untyped-call]
                socket_keepalive=True,
                **bounds,
            )
        except RedisClusterException as e:
            # The client reads the topology when built: no node answered (or the
            # cluster does not cover every slot yet). A passing failure, as for one
            # server's refused connection (infrastructure/transient.py).
            raise redis.ConnectionError(str(e)) from e
    tcp = {"socket_keepalive": True} if not url.startswith("unix:") else {}
    return redis.Redis.from_url(
        url,
        health_check_interval=settings.redis_health_check_interval_seconds,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **tcp,
        **bounds,
    )


def node_clients(client: Client) -> list[redis.Redis]:
    """A client per primary (cluster) or the client itself: for what each server
    must be asked on its own (SCAN is already per node in redis-py's cluster)."""
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]  # type: ignore[no-untyped-call]
    return [client]
