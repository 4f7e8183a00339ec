"""Deprecated: moved to `natsdeploy.runtime.context`; kept for one release."""

import warnings

from natsdeploy.runtime.context import RunContext, config_dict

warnings.warn("natsdeploy.loop_skeleton is deprecated; import from natsdeploy.runtime.context",
              DeprecationWarning, stacklevel=2)

__all__ = ["RunContext", "config_dict"]
