from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ICCONV = REPO.parent / "shared" / "reference" / "icconv"
EXAMPLES = REPO / "examples"

needs_icconv = pytest.mark.skipif(not ICCONV.is_dir(), reason=f"published IC-Conv patterns not found at {ICCONV}")
