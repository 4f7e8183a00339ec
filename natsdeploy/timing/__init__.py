"""Timing primitives shared by bench and export autotune: interleaved timing, robust statistics, machine records."""
