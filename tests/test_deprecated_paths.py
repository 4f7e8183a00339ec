"""Old module paths keep working for one release, with a DeprecationWarning naming the new one."""

from __future__ import annotations

import importlib
import sys

import pytest

OLD = {
    "natsdeploy.loops": ("natsdeploy.runtime.", ["rng_state", "train_step", "run_distributed", "check_resume"]),
    "natsdeploy.loop_skeleton": ("natsdeploy.runtime.context", ["RunContext", "config_dict"]),
    "natsdeploy.shapes": ("natsdeploy.cli_values", ["parse_input_shape", "parse_int", "UsageError"]),
    "natsdeploy.runners_detector": ("natsdeploy.runners.detector", ["RuntimeBody", "feature_name"]),
}


@pytest.mark.parametrize("old", sorted(OLD))
def test_old_path_warns_and_reexports_the_same_objects(old):
    new_prefix, names = OLD[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new_prefix.rstrip(".").replace(".", r"\.")):
        mod = importlib.import_module(old)
    for name in names:
        obj = getattr(mod, name)
        home = importlib.import_module(obj.__module__)
        assert getattr(home, name) is obj
        assert obj.__module__.startswith(("natsdeploy.runtime", "natsdeploy.cli_values", "natsdeploy.errors",
                                          "natsdeploy.runners"))
