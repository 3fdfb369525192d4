"""Pytest fixtures for real components (control plane, Prometheus, S3) used by tests/ and e2e/."""
