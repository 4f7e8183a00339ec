"""The comparator used by every parity check."""

import math

import numpy as np
import pytest

from natsdeploy.verify.parity import compare


def test_relative_error_and_pass():
    ref = {"a": np.array([1.0, -4.0, 2.0]), "b": np.zeros((2, 2))}
    got = {"a": np.array([1.0, -4.0002, 2.0]), "b": np.zeros((2, 2))}
    r = compare(got, ref, tolerance=1e-4)
    a = r.outputs[0]
    assert a.max_abs_err == pytest.approx(2e-4) and a.max_abs_ref == 4.0 and a.rel_err == pytest.approx(5e-5)
    assert a.passed and r.passed
    assert not compare(got, ref, tolerance=1e-5).passed


def test_per_output_tolerance():
    ref = {"a": np.ones(3), "b": np.ones(3)}
    got = {"a": np.ones(3) * 1.01, "b": np.ones(3) * 1.001}
    r = compare(got, ref, tolerance={"a": 0.02, "b": 1e-4})
    assert [o.passed for o in r.outputs] == [True, False]


def test_nan_always_fails():
    ref = {"a": np.ones(3)}
    got = {"a": np.array([1.0, math.nan, 1.0])}
    r = compare(got, ref, tolerance=1e9)
    assert not r.passed and r.outputs[0].has_nan
    assert not compare({"a": np.ones(3)}, {"a": np.array([math.nan, 1, 1])}, tolerance=1.0).passed


def test_zero_reference():
    assert compare({"a": np.zeros(2)}, {"a": np.zeros(2)}).passed
    assert not compare({"a": np.ones(2)}, {"a": np.zeros(2)}).passed


def test_shape_and_missing_output_raise():
    with pytest.raises(ValueError, match="shape"):
        compare({"a": np.ones(3)}, {"a": np.ones(4)})
    with pytest.raises(ValueError, match="missing"):
        compare({}, {"a": np.ones(4)})
