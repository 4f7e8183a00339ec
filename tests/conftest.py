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
