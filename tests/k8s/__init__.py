"""Test helpers: an HTTP server that replays recorded Kubernetes API responses."""
