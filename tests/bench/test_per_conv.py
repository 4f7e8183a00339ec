"""bench/per_conv.py's table: each conv's ratio with its 95% interval and its branch widths, marked where a
width is not a multiple of the CPU's channel block (natsdeploy.targets)."""

from __future__ import annotations

from natsdeploy.bench.per_conv import format_per_conv_row, per_conv_legend

ROW = {"conv": "layer2.0.conv2", "backend": "ort", "input_shape": [1, 128, 16, 24],
       "branches": [[[1, 1], 64], [[2, 2], 40], [[1, 3], 24]], "baseline_p50_ms": 0.5, "transformed_p50_ms": 0.55,
       "ratio": 1.1, "ci95": [0.95, 1.2], "pairs": 3, "warmup_s": 0.0}


def test_row_shows_the_interval_and_marks_branches_off_the_block():
    line = format_per_conv_row(ROW, block=16)
    assert line.startswith("  layer2.0.conv2   ort ")
    assert "0.500 ms ->    0.550 ms  1.100x [0.950, 1.200]" in line
    assert line.endswith("d1:64 d2:40* d(1,3):24*")
    assert format_per_conv_row(ROW, block=8).endswith("d1:64 d2:40 d(1,3):24")  # 8-channel blocks (AVX2): all fit


def test_legend_names_the_block():
    legend = per_conv_legend(16)
    assert "ratio [95% interval]" in legend and "not a multiple of this CPU's 16-channel block" in legend
