"""`bmc-bridge`: every BMC's OpenMetrics over HTTP for Prometheus (see docs/metrics.md)."""
