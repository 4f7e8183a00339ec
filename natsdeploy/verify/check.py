"""`natsdeploy check`: an arch's branch mix and proof that its cost equals the baseline's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from natsdeploy.align import AlignmentCheck, check_alignment, format_alignment
from natsdeploy.arch import Arch, format_dilation
from natsdeploy.targets import Target, detect_target, get_target
from natsdeploy.verify.count import Counts, count

__all__ = ["CheckResult", "check_arch", "format_check"]

_STAGE_NAMES = {"layer1": "stage-2 (layer1)", "layer2": "stage-3 (layer2)",
                "layer3": "stage-4 (layer3)", "layer4": "stage-5 (layer4)"}


@dataclass(frozen=True)
class CheckResult:
    arch: Arch
    input_shape: tuple[int, ...]
    transformed: Counts
    baseline: Counts
    alignment: AlignmentCheck | None = None
    """Branches that miss the target's channel block (a warning: it never changes `equal`)."""

    @property
    def equal(self) -> bool:
        return (self.transformed.params, self.transformed.macs) == (self.baseline.params, self.baseline.macs)

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.arch.backbone, "input_shape": list(self.input_shape),
                "transformed": self.transformed.to_dict(), "baseline": self.baseline.to_dict(),
                "equal": self.equal, "alignment": self.alignment.to_dict() if self.alignment else None}


def check_arch(arch: Arch, input_shape: Sequence[int] = (1, 3, 800, 1216), *,
               target: Target | str | None = None) -> CheckResult:
    """Count the transformed and the baseline network at `input_shape` (on the meta device: no data),
    and find the branches that are not a multiple of `target`'s channel block (default: this machine's)."""
    import torch

    from natsdeploy.models.build import build_backbone

    with torch.device("meta"):
        transformed = build_backbone(arch)
        baseline = build_backbone(arch.identity_like())
    shape = tuple(int(d) for d in input_shape)
    counted = count(transformed, shape)
    tgt = detect_target() if target is None else get_target(target) if isinstance(target, str) else target
    alignment = check_alignment(arch, tgt, shape, total_macs=counted.macs)
    return CheckResult(arch, shape, counted, count(baseline, shape), alignment)


def format_check(result: CheckResult, *, arch_path: str = "ARCH.json") -> str:
    arch = result.arch
    lines = [f"arch: {arch.backbone}, {len(arch.convs)} of {len(arch.spec.convs)} 3x3 convs transformed",
             "", "branch mix (output channels per dilation, summed over the stage's 3x3 convs)"]
    for stage, mix in arch.branch_mix().items():
        total = sum(mix.values())
        parts = ", ".join(f"{format_dilation(d)} {c} ({100 * c / total:.0f}%)" for d, c in sorted(mix.items()))
        lines.append(f"  {_STAGE_NAMES.get(stage, stage):<17} {parts}")
    t, b = result.transformed, result.baseline
    shape = "x".join(map(str, result.input_shape))
    lines += ["", f"cost at input {shape}", f"  {'':<8}{'transformed':>18}{'baseline':>18}  verdict"]
    for label, tv, bv in (("params", t.params, b.params), ("MACs", t.macs, b.macs)):
        lines.append(f"  {label:<8}{tv:>18,}{bv:>18,}  {'equal' if tv == bv else 'DIFFERENT'}")
    if result.alignment is not None:
        lines += ["", *format_alignment(result.alignment, arch_path=arch_path)]
    lines.append("")
    lines.append("verdict: equal" if result.equal else "verdict: DIFFERENT (transformed cost differs from baseline)")
    return "\n".join(lines)
