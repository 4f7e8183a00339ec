"""natsdeploy.files: a write either lands whole or leaves the old file and no temp behind."""

from __future__ import annotations

import os

import pytest
import torch

from natsdeploy.files import atomic_write, atomic_write_bytes, atomic_write_text


def test_streamed_write_lands_whole_with_the_umask_mode(tmp_path):
    sd = {"w": torch.arange(10.0)}
    path = atomic_write(tmp_path / "sub" / "ck.pth", lambda f: torch.save(sd, f))
    assert torch.equal(torch.load(path, weights_only=True)["w"], sd["w"])
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600
    assert atomic_write_text(tmp_path / "t.txt", "é\n").read_bytes() == "é\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "t.txt"]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = atomic_write_bytes(tmp_path / "out.bin", b"old")

    def half_then_fail(f):
        f.write(b"new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_read_json_names_the_field_in_one_line(tmp_path):
    import pytest

    from natsdeploy.errors import ArchError
    from natsdeploy.files import read_json

    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "ok.json", field="f", expected="x") == {"a": [1, 2]}
    (tmp_path / "bad.json").write_text("{")
    cases = [(tmp_path / "none.json", r"^f: got '.*none\.json', expected an existing file$"),
             (tmp_path / "bad.json", r"^f: got invalid JSON in '.*bad\.json' \(.*\), expected a JSON object$"),
             (tmp_path, r"^f: got '.*' \(.*\), expected a JSON file$")]
    for path, pattern in cases:
        with pytest.raises(ArchError, match=pattern):
            read_json(path, field="f", expected="a JSON object")
