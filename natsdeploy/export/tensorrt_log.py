"""TensorRT's optimizer decisions, read from an enterprise TensorRT builder log (TensorRT 8-11, verbose).

Enterprise TensorRT logs how it removes a Concat: ``Eliminating concatenation C``, then for each input
either ``Retargeting T to C_out`` (the producer writes straight into its slice of the output: free) or
``Generating copy for T to C_out because <reason>`` (a copy kernel: the cost natsdeploy's transformed
convs must not pay), and ``Merging layers: a || b`` for horizontally fused layers (lines as quoted in
NVIDIA/TensorRT#3254 and #4345, dusty-nv/jetson-inference#1630). TensorRT-RTX logs none of these lines
(0 of 2556 messages for the example's engine; none either for int8 engines or with two optimization
profiles): there the engine's layer list (`natsdeploy.export.tensorrt.audit_concats`, and for int8
`natsdeploy.export.tensorrt_int8`) stays the audit's only source, and `parse_optimizer_log` says so
through `OptimizerDecisions.logged`. `export --engine` puts each engine's decisions into the report's
`tensorrt` section (``optimizer_log``); where they are logged, a copy generated for a transformed conv's
Concat (``<conv>/concat``) fails the TensorRT audit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConcatDecision", "OptimizerDecisions", "parse_optimizer_log"]

_ELIMINATE = re.compile(r"Eliminating concatenation (?P<concat>.+?)\s*$")
_RETARGET = re.compile(r"Retargeting (?P<tensor>.+?) to (?P<dest>.+?)\s*$")
_COPY = re.compile(r"Generating copy for (?P<tensor>.+?) to (?P<dest>.+?) because (?P<reason>.+?)\.?\s*$")
_MERGE = re.compile(r"Merging layers: (?P<layers>.+?)\s*$")


@dataclass
class ConcatDecision:
    """What TensorRT did with one eliminated Concat's inputs."""

    concat: str
    retargeted: list[str] = field(default_factory=list)
    copies: list[tuple[str, str]] = field(default_factory=list)
    """(input tensor, reason) for each input TensorRT copied instead of retargeting."""

    @property
    def copy_free(self) -> bool:
        return not self.copies

    def to_dict(self) -> dict[str, Any]:
        return {"retargeted": list(self.retargeted), "copies": [{"tensor": t, "reason": r} for t, r in self.copies],
                "copy_free": self.copy_free}


@dataclass
class OptimizerDecisions:
    """Every Concat elimination, retarget, copy and layer merge one build log records."""

    concats: dict[str, ConcatDecision] = field(default_factory=dict)
    merged: list[list[str]] = field(default_factory=list)
    orphan_copies: list[tuple[str, str, str]] = field(default_factory=list)
    """(tensor, destination, reason) copies logged outside any Concat elimination."""

    @property
    def logged(self) -> bool:
        """False where the log holds no decision line at all (TensorRT-RTX, or a non-verbose logger)."""
        return bool(self.concats or self.merged or self.orphan_copies)

    def to_dict(self) -> dict[str, Any]:
        if not self.logged:
            return {"logged": False, "note": "the builder logged no optimizer decisions (TensorRT-RTX logs none; "
                                             "enterprise TensorRT logs them with a verbose logger)"}
        return {"logged": True, "eliminated_concats": len(self.concats),
                "copy_free_concats": sum(c.copy_free for c in self.concats.values()),
                "concats": {k: c.to_dict() for k, c in self.concats.items()},
                "merged_layers": [list(m) for m in self.merged],
                "other_copies": [{"tensor": t, "to": d, "reason": r} for t, d, r in self.orphan_copies]}


def _message(line: str) -> str:
    """The message without a logger's prefix (`[TRT] `, `[TensorRT] VERBOSE: `, `[12/05/2026-...] [TRT] [V] `)."""
    return re.sub(r"^(?:\s*\[[^\]]*\]\s*)*(?:VERBOSE:\s*)?", "", line.rstrip("\n"))


def parse_optimizer_log(lines: Iterable[str]) -> OptimizerDecisions:
    """Group the decision lines of a builder log: retargets and copies that follow an
    ``Eliminating concatenation`` line belong to that Concat, up to the next such line or other stage."""
    out = OptimizerDecisions()
    current: ConcatDecision | None = None
    for raw in lines:
        for line in str(raw).splitlines() or [""]:
            msg = _message(line)
            if m := _ELIMINATE.match(msg):
                current = out.concats.setdefault(m["concat"], ConcatDecision(m["concat"]))
            elif m := _COPY.match(msg):
                if current is not None:
                    current.copies.append((m["tensor"], m["reason"]))
                else:
                    out.orphan_copies.append((m["tensor"], m["dest"], m["reason"]))
            elif m := _RETARGET.match(msg):
                if current is not None:
                    current.retargeted.append(m["tensor"])
            elif m := _MERGE.match(msg):
                out.merged.append([s.strip() for s in m["layers"].split("||")])
                current = None
            elif msg.startswith("After "):  # "After concat removal: 66 layers": the concat stage has ended
                current = None
    return out
