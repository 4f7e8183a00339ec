from pathlib import Path

import pytest

SMALL = dict(train_images=24, val_images=6, image_size=(128, 160), classes=3, seed=3)


@pytest.fixture(scope="session")
def synth_root(synth_coco) -> Path:
    """A small synthetic set shared by the reader tests (read-only: do not modify)."""
    return Path(synth_coco(**SMALL))
