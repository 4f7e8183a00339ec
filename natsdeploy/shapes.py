"""Deprecated: moved to `natsdeploy.cli_values` (and `UsageError` to `natsdeploy.errors`); kept for one release."""

import warnings

from natsdeploy.cli_values import add_detector_option_argument, format_shape, parse_float, parse_input_shape, parse_int
from natsdeploy.errors import UsageError

warnings.warn("natsdeploy.shapes is deprecated; import from natsdeploy.cli_values (UsageError: natsdeploy.errors)",
              DeprecationWarning, stacklevel=2)

__all__ = ["UsageError", "parse_input_shape", "format_shape", "parse_int", "parse_float", "add_detector_option_argument"]
