"""Regenerate the shipped example arch files (deterministic).

The NATS-C examples decode seeded random architecture weights with the paper's decode rule:
they have the shape of a real search result (16 channel groups, several dilations per conv) but
were not searched on data. Run: python examples/generate.py (writes examples/ and the copies shipped in
the package, natsdeploy/examples/)
"""

from pathlib import Path

import numpy as np

from natsdeploy.search.decode import PRESETS, decode, searchable_convs
from natsdeploy.specs import BACKBONES

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent / "natsdeploy" / "examples"


def random_decode(backbone: str, seed: int, groups: int = 16, preset: str = "NATS-C"):
    rng = np.random.default_rng(seed)
    alphas = {}
    for name in searchable_convs(backbone):
        stage = BACKBONES[backbone].convs[name].stage
        alphas[name] = rng.normal(size=(groups, len(PRESETS[preset][stage])))
    arch = decode(alphas, backbone, preset)
    prov = dict(arch.provenance)
    prov["note"] = f"decoded from seeded random alphas (numpy seed {seed}), not a searched result"
    return type(arch)(backbone=arch.backbone, convs=arch.convs, provenance=prov)


if __name__ == "__main__":
    for backbone in ("resnet18", "resnet50"):
        arch = random_decode(backbone, seed=0)
        for folder in (HERE, SHIPPED):
            print("wrote", arch.save(folder / f"{backbone}_nats_c.json"))
