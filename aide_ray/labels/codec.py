"""The entry format of corrected labels: a label's XOR difference from its source, boxed and packed.

AIDE (Wang, Li et al., Nat. Commun. 2021) replaces the labels of the training
samples a network disagrees with most by that network's prediction. The store
keeps such a label only where it differs from the source label, as one
``bytes`` entry encoding ``label ^ source`` inside its bounding box:

* flags (bit 0: bit-packed, bit 1: zlib), then the box y0, y1, x0, x1
  (half-open) as little-endian uint16, then the payload;
* the payload is bit-packed (np.packbits order) when the difference is in
  {0, 1}, which is always the case for binary masks, else raw uint8; zlib
  level 1 when it is large enough for that to pay off.

This file is its own module because both sides use it without the rest: workers
encode their corrections before sending them (:func:`encode_differences`) and
decode them onto the source labels they already hold (:func:`apply_difference`),
while the store only keeps and versions the bytes. See docs/label_store.md.
"""

from __future__ import annotations

import struct
import sys
import zlib
from typing import Sequence

import numpy as np

__all__ = ["encode_differences", "apply_difference", "entry_lengths", "check_masks", "MAX_SIDE"]

# Entry layout: flags (bit 0: bit-packed, bit 1: zlib), then the bounding box
# y0, y1, x0, x1 (half-open) as uint16, then the payload.
_HEADER = struct.Struct("<BHHHH")
_FLAG_PACKED = 1
_FLAG_ZLIB = 2
# zlib's per-call set-up costs ~5 us whatever the input; below this many bytes
# it saves little memory, and at 10^6 samples per epoch it would cost seconds.
_COMPRESS_MIN_BYTES = 256
_ZLIB_LEVEL = 1
# Labels compared per vectorised pass: large enough to amortise the ~20 numpy
# calls per pass, small enough for the comparison buffer (1 MiB at 256 x 256).
_ENCODE_CHUNK = 128
MAX_SIDE = 65535  # the bounding box is stored as uint16


def check_masks(masks: np.ndarray, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """``masks`` as a C-contiguous (n, H, W) uint8 array, or an error naming ``name``.

    Args:
        masks: labels, shape (n, H, W), uint8.
        name: the argument's name, for the error message.
        shape: the required (H, W), if any.

    Raises:
        TypeError: if ``masks`` is not a uint8 numpy array.
        ValueError: if its shape is not (n, H, W) (with ``shape``'s H and W when given).
    """
    if not isinstance(masks, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(masks).__name__}")
    if masks.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8, got {masks.dtype}; convert with .astype(np.uint8)")
    if masks.ndim != 3:
        raise ValueError(f"{name} must have shape (n, H, W), got {masks.shape}")
    if shape is not None and masks.shape[1:] != tuple(shape):
        raise ValueError(f"{name} must have shape (n, {shape[0]}, {shape[1]}), got {masks.shape}")
    return np.ascontiguousarray(masks)


def entry_lengths(packed: Sequence[bytes | None]) -> np.ndarray:
    """Byte length of each entry, checking that each one can be an entry.

    Args:
        packed: n entries from :func:`encode_differences`; ``None`` for "no entry".

    Returns:
        (n,) int64: the length of each entry, -1 for ``None``.

    Raises:
        TypeError: if an entry is neither ``bytes`` nor ``None``.
        ValueError: if an entry is shorter than the header.
    """
    if not all(e is None or type(e) is bytes for e in packed):
        bad = next(e for e in packed if e is not None and type(e) is not bytes)
        raise TypeError(f"packed entries must be bytes from encode_differences or None, got {type(bad).__name__}")
    lengths = np.array([-1 if e is None else len(e) for e in packed], dtype=np.int64)
    if lengths.size and np.any((lengths >= 0) & (lengths < _HEADER.size)):
        raise ValueError(f"packed entries must be at least {_HEADER.size} bytes (header), got a shorter one")
    return lengths


def _finish_entry(payload: bytes, flags: int, y0: int, y1: int, x0: int, x1: int) -> bytes:
    if len(payload) >= _COMPRESS_MIN_BYTES:
        compressed = zlib.compress(payload, _ZLIB_LEVEL)
        if len(compressed) < len(payload):
            return _HEADER.pack(flags | _FLAG_ZLIB, y0, y1, x0, x1) + compressed
    return _HEADER.pack(flags, y0, y1, x0, x1) + payload


def _encode_crop(diff: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> bytes:
    """Entry of one difference crop (y1-y0, x1-x0) uint8: bit-packed if in {0, 1}, else raw."""
    if diff.max() <= 1:
        return _finish_entry(np.packbits(diff).tobytes(), _FLAG_PACKED, y0, y1, x0, x1)
    return _finish_entry(diff.tobytes(), 0, y0, y1, x0, x1)


def encode_differences(masks: np.ndarray, source: np.ndarray) -> list[bytes | None]:
    """Encode each label as its difference from the source label.

    This is what :meth:`LabelStore.commit` stores; workers may call it
    themselves and send the result to :meth:`LabelStore.commit_encoded`, which
    moves the encoding cost off the store and sends bytes instead of masks.

    Args:
        masks: current labels, shape (n, H, W), uint8 (binary {0, 1} or class maps).
        source: the source labels of the same samples, shape (n, H, W), uint8.

    Returns:
        n entries: ``None`` where ``masks[i]`` equals ``source[i]``, else the
        encoded XOR difference (see the module docstring).

    Raises:
        TypeError: if an array is not uint8.
        ValueError: if the shapes differ or a side exceeds 65535.
    """
    masks = check_masks(masks, "masks")
    source = check_masks(source, "source_masks")
    if masks.shape != source.shape:
        raise ValueError(f"masks and source_masks must have the same shape, got {masks.shape} and {source.shape}")
    n, height, width = masks.shape
    if max(height, width) > MAX_SIDE:
        raise ValueError(f"label sides must be <= {MAX_SIDE}, got {height} x {width}")
    out: list[bytes | None] = [None] * n
    # Rows that split into whole uint64 words are compared and packed 8 pixels
    # at a time (the box's x extent is then rounded out to 8 pixels: zero bits).
    words = width % 8 == 0 and sys.byteorder == "little"
    group = 8 if words else 1
    # One reusable comparison buffer: a fresh one per chunk costs page faults.
    differs = np.empty(min(n, _ENCODE_CHUNK) * height * (width // group), dtype=bool)
    for start in range(0, n, _ENCODE_CHUNK):
        m = masks[start : start + _ENCODE_CHUNK]
        s = source[start : start + _ENCODE_CHUNK]
        boxes = _find_boxes(m, s, group, differs)
        if boxes is None:
            continue
        if words:
            _encode_boxes_words(m, s, boxes, out, start)
        else:
            for i, ya, yb, xa, xb in zip(*(v.tolist() for v in boxes)):
                out[start + i] = _encode_crop(m[i, ya:yb, xa:xb] ^ s[i, ya:yb, xa:xb], ya, yb, xa, xb)
    return out


def _find_boxes(m: np.ndarray, s: np.ndarray, group: int, buffer: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Bounding boxes of the differing pixels of a chunk of labels (b, H, W).

    Returns:
        None when no label differs, else (sample, y0, y1, x0, x1) int64 arrays,
        one value per differing label; x in units of ``group`` pixels; half-open.
    """
    b, height, width = m.shape
    word = np.uint64 if group == 8 else np.uint8
    words_per_row = width // group
    words_per_label = height * words_per_row
    differs = buffer[: b * words_per_label].reshape(b, words_per_label)
    np.not_equal(m.view(word).reshape(b, words_per_label), s.view(word).reshape(b, words_per_label), out=differs)
    # Differences are sparse, so boxes come from the positions of the differing
    # words (sorted by sample), not from reductions over whole labels.
    pos = np.flatnonzero(differs)
    if pos.size == 0:
        return None
    sample = pos // words_per_label
    rest = pos - sample * words_per_label
    row = rest // words_per_row
    col = rest - row * words_per_row
    first = np.flatnonzero(np.r_[True, sample[1:] != sample[:-1]])
    return (
        sample[first],
        row[first],
        np.maximum.reduceat(row, first) + 1,
        np.minimum.reduceat(col, first),
        np.maximum.reduceat(col, first) + 1,
    )


_HIGH_BITS = np.uint64(0xFEFEFEFEFEFEFEFE)
# Multiplying a little-endian word of eight 0/1 bytes by this constant gathers
# the bytes into the top 8 bits, first pixel highest: np.packbits' bit order.
_PACK_MAGIC = np.uint64(0x8040201008040201)


def _encode_boxes_words(
    m: np.ndarray, s: np.ndarray, boxes: tuple[np.ndarray, ...], out: list[bytes | None], start: int
) -> None:
    """Encode every box of a chunk at once, 8 pixels per uint64 word.

    The words inside all boxes are gathered, XORed and packed in a few
    vectorised operations; only labels whose difference is not in {0, 1}
    (class maps) take the per-label raw path.
    """
    b, height, width = m.shape
    words_per_row = width // 8
    sample, y0, y1, x0, x1 = boxes
    box_h = y1 - y0
    box_w = x1 - x0
    # Index of every word inside the boxes, row by row: a row's words are
    # consecutive, so index = running position + a per-row shift.
    row_owner = np.repeat(np.arange(sample.size), box_h)
    row_in_box = np.arange(row_owner.size) - np.repeat(np.cumsum(box_h) - box_h, box_h)
    row_start = ((sample * height + y0) * words_per_row + x0)[row_owner] + row_in_box * words_per_row
    row_w = box_w[row_owner]
    row_offset = np.cumsum(row_w) - row_w
    index = np.arange(int(row_offset[-1] + row_w[-1])) + np.repeat(row_start - row_offset, row_w)
    diff = np.take(m.reshape(-1).view(np.uint64), index) ^ np.take(s.reshape(-1).view(np.uint64), index)
    count = box_h * box_w
    ends = np.cumsum(count)
    offsets = ends - count
    not_binary = (np.bitwise_or.reduceat(diff, offsets) & _HIGH_BITS) != 0
    diff *= _PACK_MAGIC
    packed = diff.view(np.uint8)[7::8].tobytes()  # the top byte of each word
    columns = (sample, y0, y1, x0 * 8, x1 * 8, offsets, ends, not_binary)
    for i, ya, yb, xa, xb, o, e, raw in zip(*(v.tolist() for v in columns)):
        if raw:
            out[start + i] = _encode_crop(m[i, ya:yb, xa:xb] ^ s[i, ya:yb, xa:xb], ya, yb, xa, xb)
        else:
            out[start + i] = _finish_entry(packed[o:e], _FLAG_PACKED, ya, yb, xa, xb)


def apply_difference(label: np.ndarray, entry: bytes) -> np.ndarray:
    """XOR an encoded difference into ``label`` in place (source -> current label).

    Args:
        label: the source label, shape (H, W), uint8; modified in place.
        entry: an entry made by :func:`encode_differences` for this label.

    Returns:
        ``label``, now the current label.
    """
    flags, y0, y1, x0, x1 = _HEADER.unpack_from(entry)
    body: bytes | memoryview = memoryview(entry)[_HEADER.size :]
    if flags & _FLAG_ZLIB:
        body = zlib.decompress(body)
    h, w = y1 - y0, x1 - x0
    raw = np.frombuffer(body, dtype=np.uint8)
    diff = np.unpackbits(raw, count=h * w) if flags & _FLAG_PACKED else raw
    label[y0:y1, x0:x1] ^= diff.reshape(h, w)
    return label
