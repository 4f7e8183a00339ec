"""The typed errors of natsdeploy: one module, no imports, so anything (the CLI parser included) can use them.

Every class is a bad input, not a bug: its message is one line, `field: got X, expected Y`, and the
`natsdeploy` command maps each to exit status 2 with that line and no traceback. All are
`ValueError`s (through `InputError`), so library callers can also catch them as such.
"""

from __future__ import annotations

__all__ = ["InputError", "ArchError", "UsageError", "WeightsError", "DatasetError", "CheckpointError",
           "RuntimeBackendError"]


class InputError(ValueError):
    """Base of every bad-input error (one-line message; the CLI exits 2 with it)."""


class ArchError(InputError):
    """An arch file or value breaks a rule of ARCH_FORMAT.md (message: field, value, expectation)."""


class UsageError(InputError):
    """A command-line value that does not parse or does not fit the others (flag, value, expectation)."""


class WeightsError(InputError):
    """Weights that cannot be used for the requested backbone (missing, unreadable, wrong keys or shapes)."""


class DatasetError(InputError):
    """A dataset that cannot be read or written (path/field, value, expectation)."""


class CheckpointError(UsageError):
    """A search or train checkpoint that is missing, unreadable, unsafe, of another kind or schema.

    A `UsageError` as well, since it is always a file named on the command line (older callers catch that).
    """


class RuntimeBackendError(UsageError, RuntimeError):
    """A runtime backend (ONNX Runtime, OpenVINO, TensorRT) that cannot do what was asked on this machine: a
    missing provider or GPU, an unknown backend or precision, an engine it cannot load.

    A `UsageError` (the backend, device and precision are command-line choices) and a `RuntimeError`, as the
    runners raised before, so callers that caught either still do.
    """
