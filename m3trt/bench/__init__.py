"""Latency and accuracy measurement of bundles (no torch)."""
