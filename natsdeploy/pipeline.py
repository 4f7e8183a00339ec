"""Deprecated: moved to `natsdeploy.export` (api: `export_arch`, `ExportOptions`, `ExportResult`; report:
`format_report`; cli: `add_export_arguments`, `export_cli`); kept for one release."""

import warnings

from natsdeploy.export.api import DEFAULT_FORM, ExportOptions, ExportResult, export_arch
from natsdeploy.export.cli import add_export_arguments, export_cli
from natsdeploy.export.report import format_report

warnings.warn("natsdeploy.pipeline is deprecated; import from natsdeploy.export.api (export_arch, ExportOptions), "
              "natsdeploy.export.report (format_report) or natsdeploy.export.cli (add_export_arguments, export_cli)",
              DeprecationWarning, stacklevel=2)

__all__ = ["ExportResult", "ExportOptions", "export_arch", "add_export_arguments", "export_cli", "format_report",
           "DEFAULT_FORM"]
