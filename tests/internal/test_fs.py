"""Local paths and URIs go through the same helpers (file:// stands in for s3:// here)."""

from __future__ import annotations

from aide_ray._internal import fs


def test_local_and_uri_paths_read_write_and_copy(tmp_path):
    local = tmp_path / "a" / "x.txt"
    fs.write_text(local, "hello")
    assert fs.exists(local) and fs.read_text(local) == "hello"
    uri = f"file://{tmp_path}/b"
    assert fs.is_uri(uri) and not fs.is_uri(local)
    fs.copy_file(local, fs.join(uri, "y.txt"))
    assert fs.read_text(fs.join(uri, "y.txt")) == "hello"
    fs.write_text(fs.join(uri, "z.txt"), "z")
    assert (tmp_path / "b" / "z.txt").read_text() == "z"
    assert not fs.exists(fs.join(uri, "missing.txt"))
    assert fs.resolve(uri) == uri
