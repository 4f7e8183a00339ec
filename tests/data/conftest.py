from pathlib import Path

import pytest

from natsdeploy.data.synthetic import make_synthetic_coco

SMALL = dict(train_images=24, val_images=6, image_size=(128, 160), classes=3, seed=3)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic set shared by the reader tests (read-only: do not modify)."""
    return make_synthetic_coco(tmp_path_factory.mktemp("synth") / "ds", **SMALL)
