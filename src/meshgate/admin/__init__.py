"""The admin API: health, readiness, metrics, config, routes, upstreams and operations."""
