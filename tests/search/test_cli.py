"""`natsdeploy search --align N` and `natsdeploy decode CKPT --align N` (ARCH_FORMAT "Aligned decode")."""

from __future__ import annotations

import pytest

from natsdeploy import load_arch
from natsdeploy.cli import main
from tests.conftest import FAST_OPTIONS
from tests.helpers import assert_exit_2


@pytest.fixture(scope="module")
def aligned_search(module_tmp, synth_coco):
    """A short resnet18 search on a small synthetic set, decoded with --align 32 (layer2: groups of 16).

    layer2 and layer3 only: layer4's replicas would be two thirds of the checkpoint, and --align's
    rounding is the same code for every stage."""
    out = module_tmp("alignsearch") / "s"
    code = main(["search", "--data", synth_coco(train_images=4, val_images=1), "--backbone", "resnet18",
                 "--stages", "layer2,layer3", "--epochs", "2", "--warmup-epochs", "1", "--groups", "8",
                 "--min-size", "96", "--max-size", "128", "--max-steps-per-epoch", "1", "--alpha-lr", "0.5",
                 "--out", str(out), "--no-progress", "--align", "32", *FAST_OPTIONS])
    assert code == 0
    return out


def test_search_align_records_it_and_aligns_every_branch(aligned_search):
    arch = load_arch(aligned_search / "arch.json")
    assert arch.provenance["align"] == 32 and arch.convs
    assert all(b.channels % 32 == 0 for ct in arch.convs.values() for b in ct.branches)


def test_decode_align_defaults_to_the_searchs_and_can_be_overridden(aligned_search, tmp_path, capsys):
    import torch

    from natsdeploy.search.decode import decode

    searched = load_arch(aligned_search / "arch.json")
    ckpt = str(aligned_search / "checkpoint.pth")
    assert main(["decode", ckpt, "-o", str(tmp_path / "d.json")]) == 0
    assert load_arch(tmp_path / "d.json").convs == searched.convs
    assert main(["decode", ckpt, "--align", "1", "-o", str(tmp_path / "plain.json")]) == 0
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    alphas = {k[k.find("layer"):-len(".alpha")]: v for k, v in sd.items() if k.endswith(".alpha")}
    assert load_arch(tmp_path / "plain.json").convs == decode(alphas, "resnet18").convs
    assert main(["decode", ckpt, "--align", "64", "-o", str(tmp_path / "d64.json")]) == 0
    d64 = load_arch(tmp_path / "d64.json")
    assert d64.provenance["align"] == 64
    assert all(b.channels % 64 == 0 for ct in d64.convs.values() for b in ct.branches)
    err = assert_exit_2(["decode", ckpt, "--align", "48", "-o", tmp_path / "bad.json"], capsys,
                        contains="align: got 48, expected a divisor of 128", absent=[tmp_path / "bad.json"])
    assert "checkpoint" not in err  # a bad --align is not a bad checkpoint


@pytest.mark.parametrize("value, expected", [("48", "--align: got 48, expected a divisor of 128"),
                                             ("0", "--align: got '0', expected an integer >= 1")])
def test_search_bad_align_exits_2_before_any_work(tmp_path, capsys, value, expected):
    out = tmp_path / "s"
    assert_exit_2(["search", "--data", tmp_path, "--backbone", "resnet18", "--groups", "8", "--out", out,
                   "--align", value], capsys, contains=expected, absent=[out])
