"""Deprecated: moved to `natsdeploy.runners.detector` (`RuntimeBody`, `feature_name`); kept for one release."""

import warnings

from natsdeploy.runners.detector import RuntimeBody, feature_name

warnings.warn("natsdeploy.runners_detector is deprecated; import from natsdeploy.runners.detector",
              DeprecationWarning, stacklevel=2)

__all__ = ["RuntimeBody", "feature_name"]
