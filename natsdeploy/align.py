"""Hardware-aligned archs (ARCH_FORMAT.md "Alignment"): align an arch, report, diagnose.

Runtimes compute convolutions in channel blocks; a branch whose width is not a multiple of the
block leaves the fast path. `align_arch` rounds every branch to a multiple of N moving the fewest
filters; `unaligned_branches` / `check_alignment` say which branches of an arch miss a target's
block and what share of the MACs they carry. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

from natsdeploy.arch import Arch, Branch, ConvTransform, format_dilation
from natsdeploy.errors import ArchError
from natsdeploy.models.macs import backbone_macs, conv3x3_macs_per_channel
from natsdeploy.specs import ConvInfo
from natsdeploy.targets import Target

__all__ = ["align_command", "round_shares", "check_multiple", "validate_multiple", "align_arch", "filter_dilations",
           "ConvAlignment", "AlignReport", "align_report", "format_align_report", "format_dilation",
           "UnalignedBranch", "unaligned_branches", "AlignmentCheck", "check_alignment", "alignment_entry",
           "format_alignment"]

RETRAIN_NOTE = ("note: the aligned arch is a different arch: retrain or fine-tune it like any decoded arch "
                "(filters that changed dilation no longer see what they were trained on)")


def round_shares(shares: Sequence[Fraction | int], tiebreak: Sequence[float]) -> list[int]:
    """Round ideal shares to integers with the same (integer) sum: floor, then one unit each to the
    largest fractional parts; ties to the larger `tiebreak`, then to the lower index."""
    x = [Fraction(s) for s in shares]
    total = sum(x, Fraction(0))
    if total.denominator != 1:
        raise ArchError(f"shares: got a sum of {total}, expected an integer")
    units = [math.floor(v) for v in x]
    rest = int(total) - sum(units)
    order = sorted(range(len(x)), key=lambda i: (-(x[i] - units[i]), -tiebreak[i], i))
    for i in order[:rest]:
        units[i] += 1
    return units


def _valid_multiples(infos: Sequence[ConvInfo]) -> list[int]:
    g = math.gcd(*(i.out_channels for i in infos))
    k = math.lcm(*(i.channels_per_group if i.groups > 1 else 1 for i in infos))
    return [d for d in range(1, g + 1) if g % d == 0 and d % k == 0]


def _check_positive_int(value: Any, field: str, hint: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ArchError(f"{field}: got {value!r}, expected a positive int{hint}")
    return value


def check_multiple(info: ConvInfo, multiple: Any, *, field: str = "multiple",
                   valid: Sequence[int] | None = None) -> int:
    """`multiple` if an arch may be aligned to it at conv `info`, else ArchError naming the conv."""
    hint = f"; valid here: {', '.join(map(str, valid))}" if valid else ""
    _check_positive_int(multiple, field, hint)
    if info.out_channels % multiple:
        raise ArchError(f"{field}: got {multiple}, expected a divisor of {info.out_channels} "
                        f"(out_channels of {info.name}){hint}")
    if info.groups > 1 and multiple % info.channels_per_group:
        raise ArchError(f"{field}: got {multiple}, expected a multiple of {info.channels_per_group} "
                        f"(conv-group width of {info.name}, groups={info.groups}){hint}")
    return multiple


def validate_multiple(arch: Arch, multiple: Any, *, field: str = "multiple") -> int:
    """Check N against every listed conv (divides out_channels; ResNeXt: multiple of the group width)."""
    infos = [arch.spec.convs[name] for name in arch.convs]
    if not infos:
        return _check_positive_int(multiple, field, "")
    valid = _valid_multiples(infos)
    for info in infos:
        check_multiple(info, multiple, field=field, valid=valid)
    return multiple


def _align_conv(ct: ConvTransform, info: ConvInfo, n: int) -> ConvTransform:
    widths = [b.channels for b in ct.branches]
    units = round_shares([Fraction(c, n) for c in widths], widths)
    new = [n * u for u in units]
    if info.permutable:
        perm = ct.perm()
        own = [perm[o:o + c] for o, c in zip(ct.offsets(), widths)]
        released: list[int] = []
        for b, (c, w) in enumerate(zip(widths, new)):
            if w < c:  # a shrinking branch gives up its last filters
                released += own[b][w:]
                own[b] = own[b][:w]
        pos = 0
        for b, (c, w) in enumerate(zip(widths, new)):
            if w > c:  # growing branches take released filters in order, in branch order
                own[b] = own[b] + released[pos:pos + w - c]
                pos += w - c
        order = [f for b, w in enumerate(new) if w for f in own[b]]
        permutation = None if order == list(range(info.out_channels)) else tuple(order)
    else:
        permutation = None  # identity; only the branch boundaries move
    branches = tuple(Branch(b.dilation, w) for b, w in zip(ct.branches, new) if w)
    return ConvTransform(branches, permutation)


def align_arch(arch: Arch, multiple: int) -> Arch:
    """The arch aligned to `multiple` (ARCH_FORMAT "Aligning an existing arch"); `align` is recorded
    in the provenance. Raises ArchError when `multiple` is not valid for every listed conv."""
    n = validate_multiple(arch, multiple)
    convs = {name: _align_conv(ct, arch.spec.convs[name], n) for name, ct in arch.convs.items()}
    prov = arch.provenance
    prov = dict(prov) if isinstance(prov, Mapping) else ({} if prov is None else {"previous": prov})
    prov["align"] = n
    return Arch(backbone=arch.backbone, convs=convs, provenance=prov)


# -- what changed -----------------------------------------------------------------------------
def filter_dilations(ct: ConvTransform | None, info: ConvInfo) -> list[tuple[int, int]]:
    """The dilation each baseline filter runs with (index: baseline filter); unlisted: all 1."""
    out = [(1, 1)] * info.out_channels
    if ct is None:
        return out
    perm = ct.perm()
    for o, b in zip(ct.offsets(), ct.branches):
        for f in perm[o:o + b.channels]:
            out[f] = b.dilation
    return out


def _widths(ct: ConvTransform | None, info: ConvInfo) -> tuple[tuple[tuple[int, int], int], ...]:
    branches = ct.branches if ct is not None else (Branch((1, 1), info.out_channels),)
    return tuple((b.dilation, b.channels) for b in branches)


@dataclass(frozen=True)
class ConvAlignment:
    """One conv before and after: (dilation, channels) per branch, and filters whose dilation changed."""

    name: str
    before: tuple[tuple[tuple[int, int], int], ...]
    after: tuple[tuple[tuple[int, int], int], ...]
    changed: int
    filters: int

    def to_dict(self) -> dict[str, Any]:
        return {"conv": self.name, "before": [[list(d), c] for d, c in self.before],
                "after": [[list(d), c] for d, c in self.after], "changed": self.changed, "filters": self.filters}


@dataclass(frozen=True)
class AlignReport:
    """What aligning did, per conv (`align_report`), with totals over the convs."""

    convs: tuple[ConvAlignment, ...]

    @property
    def changed(self) -> int:
        return sum(c.changed for c in self.convs)

    @property
    def filters(self) -> int:
        return sum(c.filters for c in self.convs)

    def to_dict(self) -> dict[str, Any]:
        return {"convs": [c.to_dict() for c in self.convs], "changed": self.changed, "filters": self.filters}


def align_report(before: Arch, after: Arch) -> AlignReport:
    """Per conv listed in either arch: widths before/after and how many filters changed dilation."""
    if before.backbone != after.backbone:
        raise ArchError(f"after.backbone: got {after.backbone!r}, expected {before.backbone!r}")
    rows = []
    for name, info in before.spec.convs.items():
        a, b = before.convs.get(name), after.convs.get(name)
        if a is None and b is None:
            continue
        changed = sum(x != y for x, y in zip(filter_dilations(a, info), filter_dilations(b, info)))
        rows.append(ConvAlignment(name, _widths(a, info), _widths(b, info), changed, info.out_channels))
    return AlignReport(tuple(rows))


def _fmt_widths(widths: Sequence[tuple[tuple[int, int], int]]) -> str:
    return " ".join(f"{format_dilation(d)}:{c}" for d, c in widths)


def format_align_report(report: AlignReport, multiple: int) -> str:
    """Per conv `widths before -> after, changed`, the total, and the retraining note."""
    lines = [f"aligned to multiples of {multiple} channels (widths as dilation:channels)"]
    width = max((len(c.name) for c in report.convs), default=0)
    for c in report.convs:
        lines.append(f"  {c.name:<{width}}  {_fmt_widths(c.before)} -> {_fmt_widths(c.after)}  "
                     f"({c.changed} of {c.filters} filters changed dilation)")
    share = report.changed / report.filters if report.filters else 0.0
    lines.append(f"total: {report.changed} of {report.filters} filters in {len(report.convs)} convs "
                 f"changed dilation ({share:.1%})")
    lines.append(RETRAIN_NOTE)
    return "\n".join(lines)


# -- diagnostics ------------------------------------------------------------------------------
class UnalignedBranch(NamedTuple):
    """A branch (index in its conv's list) whose width is not a multiple of the block."""

    conv: str
    index: int
    dilation: tuple[int, int]
    channels: int

    def to_dict(self) -> dict[str, Any]:
        return {"conv": self.conv, "branch": self.index, "dilation": list(self.dilation), "channels": self.channels}


def unaligned_branches(arch: Arch, block: int) -> list[UnalignedBranch]:
    """Every branch of a listed conv whose width is not a multiple of `block`, in network order."""
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ArchError(f"block: got {block!r}, expected a positive int")
    return [UnalignedBranch(name, i, b.dilation, b.channels)
            for name, ct in arch.convs.items() for i, b in enumerate(ct.branches) if b.channels % block]


@dataclass(frozen=True)
class AlignmentCheck:
    """Which branches miss a target's block, and the share of the network's MACs they carry."""

    target: Target
    unaligned: tuple[UnalignedBranch, ...]
    unaligned_macs: int
    total_macs: int
    narrow: tuple[UnalignedBranch, ...] = ()
    """Branches that are not a multiple of the target's `full_rate` width (unaligned ones included)."""
    narrow_macs: int = 0
    full_rate_alignable: bool = True
    """Whether `natsdeploy align --multiple full_rate` accepts this arch (`validate_multiple`)."""

    @property
    def aligned(self) -> bool:
        return not self.unaligned

    @property
    def mac_share(self) -> float:
        return self.unaligned_macs / self.total_macs if self.total_macs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.name, "block": self.target.block, "reason": self.target.reason,
                "aligned": self.aligned,
                "unaligned_branches": [u.to_dict() for u in self.unaligned],
                "unaligned_macs": self.unaligned_macs, "total_macs": self.total_macs, "mac_share": self.mac_share,
                "full_rate": self.target.full_rate, "full_rate_reason": self.target.full_rate_reason,
                "narrow_branches": [u.to_dict() for u in self.narrow],
                "narrow_macs": self.narrow_macs,
                "narrow_share": self.narrow_macs / self.total_macs if self.total_macs else 0.0,
                "full_rate_alignable": self.full_rate_alignable}


def check_alignment(arch: Arch, target: Target, input_shape: Sequence[int], *,
                    total_macs: int | None = None) -> AlignmentCheck:
    """Unaligned branches for `target` and their MACs at `input_shape`; the share is of `total_macs`
    (default: the whole network's MACs from the spec, as `natsdeploy.verify.count` counts them).
    Also the branches narrower than the target's full-rate width (`narrow`), and whether the arch
    can be aligned to that width."""
    per_channel = conv3x3_macs_per_channel(arch.spec, input_shape)
    bad = unaligned_branches(arch, target.block)
    narrow = unaligned_branches(arch, target.full_rate)
    macs = sum(per_channel[u.conv] * u.channels for u in bad)
    total = backbone_macs(arch.spec, input_shape) if total_macs is None else int(total_macs)
    try:
        validate_multiple(arch, target.full_rate)
        alignable = True
    except ArchError:
        alignable = False
    return AlignmentCheck(target, tuple(bad), macs, total, narrow=tuple(narrow),
                          narrow_macs=sum(per_channel[u.conv] * u.channels for u in narrow),
                          full_rate_alignable=alignable)


def alignment_entry(arch: Arch, target: Any, shape: Sequence[int], total_macs: int) -> dict[str, Any]:
    """The export report's `alignment` entry: branches that miss `target`'s channel block (a `Target`, its
    name, or None for this machine's default) and their share of the graph's MACs."""
    from natsdeploy.targets import detect_target, get_target

    tgt = detect_target() if target is None else get_target(target) if isinstance(target, str) else target
    return check_alignment(arch, tgt, tuple(shape), total_macs=total_macs).to_dict()


def format_alignment(check: AlignmentCheck, *, arch_path: str = "ARCH.json") -> list[str]:
    """Report lines: every unaligned branch (grouped per conv), the MAC share, the fix; then a note on
    branches narrower than the target's full-rate width, where that is wider than the block. The fix is
    the `natsdeploy align` command for the file at `arch_path`, as it runs (quoted, with an output path)."""
    t = check.target
    head = f"alignment for {t.name} ({t.reason})"
    if check.aligned:
        return [f"{head}: every branch is a multiple of {t.block} channels", *_full_rate_lines(check, arch_path)]
    per_conv: dict[str, list[UnalignedBranch]] = {}
    for u in check.unaligned:
        per_conv.setdefault(u.conv, []).append(u)
    lines = [f"{head}: {len(check.unaligned)} branches in {len(per_conv)} convs are not a multiple of {t.block} "
             "channels (warning: they leave the runtime's blocked kernels)"]
    for conv, us in per_conv.items():
        lines.append(f"  {conv}: " + ", ".join(f"branch {u.index} {format_dilation(u.dilation)} {u.channels} ch"
                                               for u in us))
    lines.append(f"  share of MACs in unaligned branches: {check.mac_share:.1%} "
                 f"({check.unaligned_macs:,} of {check.total_macs:,})")
    lines.append(f"  suggestion: {align_command(arch_path, t.block)}")
    return lines + _full_rate_lines(check, arch_path)


def _full_rate_lines(check: AlignmentCheck, arch_path: str) -> list[str]:
    """A note when branches miss the width the target computes at the baseline's rate (beyond its block)."""
    t = check.target
    if t.full_rate == t.block or not check.narrow:
        return []
    convs = len({u.conv for u in check.narrow})
    share = check.narrow_macs / check.total_macs if check.total_macs else 0.0
    why = f"{t.full_rate_reason}, so" if t.full_rate_reason else "on this target"
    lines = [f"  full rate: {len(check.narrow)} branches in {convs} convs are not a multiple of {t.full_rate} "
             f"channels ({share:.1%} of MACs); {why} narrower branches cost more per channel"]
    if check.full_rate_alignable:
        lines.append(f"  for the baseline's speed on {t.name}: {align_command(arch_path, t.full_rate)}")
    else:
        lines.append(f"  aligning to {t.full_rate} is not possible for this arch (a listed conv's width does not allow "
                     "it)")
    return lines


def align_command(arch_path: str, multiple: int) -> str:
    """`natsdeploy align` for `arch_path`, writing `<stem>_a<multiple>.json` beside it, quoted for a shell."""
    import shlex
    from pathlib import Path

    p = Path(arch_path)
    out = p.with_name(f"{p.stem}_a{multiple}.json")
    return f"natsdeploy align {shlex.quote(str(arch_path))} --multiple {multiple} -o {shlex.quote(str(out))}"
