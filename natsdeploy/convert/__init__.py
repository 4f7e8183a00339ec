"""Other tools' dilation files <-> arch files (ARCH_FORMAT.md, "Imported formats"). Torch-free.

`icconv.py`: IC-Conv's pattern lists (a channel split per 3x3 conv, no channel order).
`rfnext.py`: RF-Next's structure files (mmcv's RFSearchHook: one dilation per conv, neck and heads included).
`cli.py`: `natsdeploy convert --from FORMAT FILE --backbone NAME` and `--to FORMAT ARCH.json`.
"""

from natsdeploy.convert.icconv import IcConvExport, baseline_dilations, from_ic_conv, load_ic_conv, to_ic_conv
from natsdeploy.convert.rfnext import RfNextExport, RfNextImport, from_rf_next, load_rf_next, to_rf_next

__all__ = ["from_ic_conv", "load_ic_conv", "to_ic_conv", "IcConvExport", "baseline_dilations",
           "from_rf_next", "load_rf_next", "to_rf_next", "RfNextImport", "RfNextExport"]
