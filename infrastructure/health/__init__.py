"""Health, readiness and the metrics endpoint of every long-running process.

``server``: the HTTP server on METRICS_PORT (/metrics, /healthz, /readyz).
``checks``: what /readyz asks of PostgreSQL, Redis, Kafka and the process's parts.
``metering``: latency observations, the pending content age, build info.
"""
