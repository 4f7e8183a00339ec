"""Latency measurement: interleaved timing, robust statistics, machine records."""
