"""The manifest CSV: which images, labels, splits and annotators make a dataset.

Every data command (``demo-data``, ``corrupt-labels``, ``ingest``) reads or
writes this one table, so its validation lives here, once: a bad cell fails
with the CSV's name, the row number and the problem, before any image is read.

Columns (see docs/data.md):

- ``case_id``: required, non-empty, no ``/``.
- ``image`` or ``image_0`` ... ``image_{M-1}``: required; M registered modalities.
  A file, or a folder holding one DICOM series.
- ``label``: optional column; the cell may be empty (must be, for kind ``none``).
- ``label_kind``: required, one of ``hq``, ``lq``, ``scribble``, ``none``
  (:mod:`aide_ray.data.label_kinds`; a scribble label marks unannotated pixels 255).
- ``annotator``, ``domain``: optional, free text (annotator without ``/``).
- ``split``: required, one of ``train``, ``val``, ``test``.
- ``clean_label``: optional high-quality reference of the same image, for
  figures and diagnostics only; never used for training.
- ``noise_protocol``, ``noise_seed``: written by ``corrupt-labels`` and
  ``demo-data`` as a record; never read.

Any other column is kept but never read, with a warning that names the closest
known column (``lable_kind`` is a typo of ``label_kind``, not a new column).

Row numbers in messages count data rows from 1 (the header is row 0), so
"row 3" is the file's fourth line.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import pandas as pd

from aide_ray._internal.io import atomic_file
from aide_ray.data.label_kinds import LABEL_KINDS, LABELLED_KINDS, NONE
from aide_ray.exceptions import InputError

__all__ = [
    "LABEL_KINDS",
    "SPLITS",
    "REQUIRED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "RECORD_COLUMNS",
    "image_columns",
    "read_manifest",
    "write_manifest",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_COLUMNS: tuple[str, ...] = ("case_id", "label_kind", "split")
# Filled with "" when absent so that every consumer sees the same columns.
OPTIONAL_COLUMNS: tuple[str, ...] = ("label", "annotator", "domain", "clean_label")
# Written by our own tools as a record of how the labels were made; never read.
RECORD_COLUMNS: tuple[str, ...] = ("noise_protocol", "noise_seed")

_IMAGE_N = re.compile(r"^image_(\d+)$")


def image_columns(columns: Sequence[str], *, source: str = "manifest") -> list[str]:
    """The image columns of a manifest, in modality order.

    Args:
        columns: the manifest's column names.
        source: name used in error messages.
    Returns:
        ``["image"]`` or ``["image_0", ..., "image_{M-1}"]``.
    Raises:
        InputError: if there is no image column, both forms are used, or the
            numbered columns are not exactly 0 .. M-1.
    """
    numbered = sorted((int(m.group(1)), c) for c in columns if (m := _IMAGE_N.match(c)))
    has_plain = "image" in columns
    if has_plain and numbered:
        raise InputError(f"{source}: use either an 'image' column or 'image_0', 'image_1', ..., not both")
    if has_plain:
        return ["image"]
    if not numbered:
        raise InputError(f"{source}: missing required column 'image' (or 'image_0', 'image_1', ... "
                         f"for several modalities); columns are {list(columns)}")
    indices = [i for i, _ in numbered]
    if indices != list(range(len(indices))):
        raise InputError(f"{source}: image columns must be image_0 ... image_{len(indices) - 1} "
                         f"without gaps, got {[c for _, c in numbered]}")
    return [c for _, c in numbered]


def _warn_unknown_columns(columns: Sequence[str], source: str) -> None:
    """Warn once per column that no reader knows, naming the closest known column."""
    known = [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *RECORD_COLUMNS, "image", "image_0"]
    for col in columns:
        if col in known or _IMAGE_N.match(col):
            continue
        close = difflib.get_close_matches(col, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known columns: {', '.join(known[:-1])}, image_N"
        warnings.warn(f"{source}: column {col!r} is not a manifest column and is never read{hint}",
                      UserWarning, stacklevel=3)


def _resolve(cell: str, base: Path) -> str:
    path = Path(os.path.expanduser(cell))
    if not path.is_absolute():
        path = base / path
    # normpath, not resolve(): keep symlinked data folders as the user named them.
    return os.path.normpath(str(path))


def read_manifest(path: str | os.PathLike, *, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a manifest CSV.

    Args:
        path: the CSV file. Relative paths in it resolve against its folder.
        check_files: also check that every referenced file or folder exists.
    Returns:
        A DataFrame indexed by the 1-based data row number, with every column
        of the CSV (unknown columns are kept, with a warning) plus the optional columns filled
        with "" where absent; all cells are strings; image, label and
        clean_label cells are absolute paths (or "").
    Raises:
        InputError: empty CSV, missing required column, bad ``label_kind`` or
            ``split``, empty ``case_id``, ``/`` in case_id or annotator,
            duplicate (case_id, annotator), missing file, or kind hq/lq/scribble
            with an empty label (kind none with a label). The message names the CSV,
            the row and the column.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the manifest is empty (expected a header and at least one row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable CSV: {str(e).splitlines()[0]}") from e
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise InputError(f"{path}: the manifest has a header but no rows")
    for col in REQUIRED_COLUMNS:
        if col not in df.columns:
            close = difflib.get_close_matches(col, list(df.columns), n=1, cutoff=0.6)
            typo = f" ({close[0]!r} looks like a typo of it)" if close else ""
            raise InputError(f"{path}: missing required column {col!r}{typo}; columns are {list(df.columns)}")
    images = image_columns(list(df.columns), source=str(path))
    _warn_unknown_columns(list(df.columns), str(path))
    for col in OPTIONAL_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    df = df.map(lambda v: v.strip() if isinstance(v, str) else v)
    df.index = pd.RangeIndex(1, len(df) + 1, name="row")

    base = path.resolve().parent
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    for row, rec in df.iterrows():
        where = f"{name} row {row}"
        case_id, annotator = rec["case_id"], rec["annotator"]
        if not case_id:
            raise InputError(f"{where}: case_id must be non-empty")
        if "/" in case_id or "/" in annotator:
            raise InputError(f"{where}: case_id and annotator must not contain '/', got "
                             f"case_id={case_id!r} annotator={annotator!r}")
        if rec["label_kind"] not in LABEL_KINDS:
            raise InputError(f"{where}: label_kind must be one of {list(LABEL_KINDS)}, got {rec['label_kind']!r}")
        if rec["split"] not in SPLITS:
            raise InputError(f"{where}: split must be one of {list(SPLITS)}, got {rec['split']!r}")
        # sample ids are case_id/annotator/slice, so the pair must be unique in
        # the whole manifest, not only within a split.
        key = (case_id, annotator)
        if key in seen:
            other_row, other_split = seen[key]
            scope = f"split {rec['split']!r}" if other_split == rec["split"] else \
                f"splits {other_split!r} and {rec['split']!r}"
            raise InputError(f"{where}: duplicate (case_id, annotator) = ({case_id!r}, {annotator!r}) "
                             f"in {scope}; first seen in row {other_row}")
        seen[key] = (int(row), rec["split"])
        if rec["label_kind"] in LABELLED_KINDS and not rec["label"]:
            raise InputError(f"{where}: label_kind {rec['label_kind']!r} needs a label file, but label is empty")
        if rec["label_kind"] == NONE and rec["label"]:
            raise InputError(f"{where}: label_kind 'none' must have an empty label, got {rec['label']!r}")
        for col in images:
            if not rec[col]:
                raise InputError(f"{where}: {col} must be a file or DICOM folder, got an empty cell")
        for col in [*images, "label", "clean_label"]:
            if rec[col]:
                resolved = _resolve(rec[col], base)
                if check_files and not os.path.exists(resolved):
                    raise InputError(f"{where}: {col} file not found: {resolved}")
                df.at[row, col] = resolved
    return df


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, *, relative_to: str | os.PathLike | None = None) -> Path:
    """Write a manifest CSV atomically.

    Args:
        df: manifest table (as returned by :func:`read_manifest`).
        path: output CSV.
        relative_to: if given, paths inside this folder are written relative
            to the CSV's folder (so the folder can be moved as a whole); other
            paths stay absolute.
    Returns:
        ``path``.
    """
    path = Path(path)
    out = df.copy()
    if relative_to is not None:
        inside = Path(os.path.abspath(relative_to))
        csv_dir = Path(os.path.abspath(path.parent))
        cols = [*image_columns(list(out.columns)), "label", "clean_label"]
        for col in cols:
            if col in out.columns:
                out[col] = [_maybe_relative(v, inside, csv_dir) for v in out[col]]
    with atomic_file(path) as tmp:
        out.to_csv(tmp, index=False, lineterminator="\n")
    return path


def _maybe_relative(value: str, inside: Path, csv_dir: Path) -> str:
    if not value:
        return value
    p = Path(os.path.abspath(value))
    if p == inside or inside in p.parents:
        return os.path.relpath(p, csv_dir)
    return str(p)
