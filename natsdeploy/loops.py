"""Deprecated: moved to `natsdeploy.runtime` (rng, distributed, step, context); kept for one release."""

import warnings

from natsdeploy.runtime.context import check_resume
from natsdeploy.runtime.distributed import average_bn_buffers, dist_info, run_distributed, wrap_ddp
from natsdeploy.runtime.rng import rng_state, rng_state_from_legacy, rng_state_problem, seed_all, set_rng_state
from natsdeploy.runtime.step import progress, to_device, train_step

warnings.warn("natsdeploy.loops is deprecated; import from natsdeploy.runtime.{rng,distributed,step,context}",
              DeprecationWarning, stacklevel=2)

__all__ = ["dist_info", "seed_all", "rng_state", "set_rng_state", "rng_state_problem", "rng_state_from_legacy",
           "to_device", "progress", "wrap_ddp", "average_bn_buffers", "check_resume", "train_step", "run_distributed"]
