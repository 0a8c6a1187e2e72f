"""Metrics: one registry of families, read by the Prometheus endpoint, CloudWatch and ``top``."""

from kingest.metrics.registry import (
    Histogram,
    MetricFamily,
    MetricType,
    Registry,
    Sample,
)

__all__ = ["Histogram", "MetricFamily", "MetricType", "Registry", "Sample"]
