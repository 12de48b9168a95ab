"""Metrics (Prometheus exposition); access log and tracing to come (issue 8)."""
