"""Paths that may be local folders or URIs (s3://, gs://, file://), through pyarrow.fs.

Shards and run folders live on shared storage in a cluster; this is the one
place that knows how to read, list and copy such paths.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

from aide_ray._internal.io import atomic_write_text

__all__ = ["is_uri", "join", "resolve", "read_text", "exists", "write_text", "copy_file"]


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def join(base: str | os.PathLike, name: str) -> str:
    return f"{str(base).rstrip('/')}/{name}" if is_uri(base) else str(Path(base) / name)


def resolve(path: str | os.PathLike) -> str:
    """Absolute local path, or the URI unchanged."""
    return str(path) if is_uri(path) else str(Path(path).expanduser().resolve())


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def exists(path: str | os.PathLike) -> bool:
    fs, p = _fs(str(path))
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_text(path: str | os.PathLike) -> str:
    fs, p = _fs(str(path))
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file; local paths atomically (temp file + rename)."""
    if not is_uri(path):
        atomic_write_text(path, text)
        return
    fs, p = _fs(str(path))
    with fs.open_output_stream(p) as f:  # object stores publish on close: no partial object is visible
        f.write(text.encode())


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    src_fs, src_p = _fs(str(src))
    dst_fs, dst_p = _fs(str(dst))
    dst_fs.create_dir(dst_p.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(src_p, dst_p, source_filesystem=src_fs, destination_filesystem=dst_fs)


def filesystem_and_paths(paths: list[str]) -> tuple[pafs.FileSystem | None, list[str]]:
    """(filesystem, plain paths) for pyarrow APIs that take a list of files of one filesystem."""
    if not paths or not is_uri(paths[0]):
        return None, list(paths)
    filesystem, _ = pafs.FileSystem.from_uri(paths[0])
    return filesystem, [pafs.FileSystem.from_uri(p)[1] for p in paths]
