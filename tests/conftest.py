"""Shared fixtures and constants: repository paths, the IC-Conv patterns, synthetic COCO sets, FAST detectors."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ICCONV = REPO.parent / "shared" / "reference" / "icconv"
EXAMPLES = REPO / "examples"

needs_icconv = pytest.mark.skipif(not ICCONV.is_dir(), reason=f"published IC-Conv patterns not found at {ICCONV}")


@pytest.fixture
def icconv_dir() -> Path:
    """The published IC-Conv patterns (../shared/reference/icconv); a test using it skips, with that reason, without."""
    if not ICCONV.is_dir():
        pytest.skip(reason=f"published IC-Conv patterns not found at {ICCONV}")
    return ICCONV


# fewer proposals and RoI samples than torchvision's defaults: same code paths, a fraction of the CPU time
# (32 training RoIs an image instead of 100: RoIAlign's single-threaded backward was a quarter of a step;
# search+train+checkpoint+parity tests 181, 166 s -> 153, 155 s measured interleaved on the Xeon)
FAST = dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=32, rpn_pre_nms_top_n_test=200,
            rpn_post_nms_top_n_test=100, box_batch_size_per_image=32)
# ... as command-line arguments (`natsdeploy search/train --detector-option KEY=VALUE`)
FAST_OPTIONS = [arg for k, v in FAST.items() for arg in ("--detector-option", f"{k}={v}")]


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory) -> Iterator[Callable[[str], Path]]:
    """Make folders for a module's shared fixtures; removed when the module's tests end.

    Their checkpoints run to hundreds of MB each, so they must not outlive the module (CI disks are small).
    """
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def synth_coco(tmp_path_factory) -> Callable[..., str]:
    """Make (or reuse) a synthetic COCO set: each distinct set is written once per session.

    The sets are shared between tests: read them, never write into them.
    """
    made: dict[tuple, str] = {}

    def make(*, train_images: int, val_images: int, image_size: tuple[int, int] = (96, 128), seed: int = 0,
             classes: int = 3) -> str:
        key = (train_images, val_images, tuple(image_size), seed, classes)
        if key not in made:
            from natsdeploy.data.synthetic import make_synthetic_coco

            made[key] = str(make_synthetic_coco(tmp_path_factory.mktemp("synth") / "data", train_images=train_images,
                                                val_images=val_images, image_size=image_size, seed=seed,
                                                classes=classes))
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_synth(synth_coco) -> str:
    """4 train / 2 val images of 64x64: a search split is 2 images, so --batch-size 8 is too large for it."""
    return synth_coco(train_images=4, val_images=2, image_size=(64, 64))


@pytest.fixture(scope="session")
def small_synth(synth_coco) -> str:
    """8 train / 4 val images of 96x128: short train runs and their parity checks."""
    return synth_coco(train_images=8, val_images=4)
