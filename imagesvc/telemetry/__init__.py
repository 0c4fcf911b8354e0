"""Metrics behind one small interface (``Metrics``), with Prometheus and DogStatsD backends.
Every metric name lives in ``names``."""
