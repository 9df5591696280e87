"""Pixel values of a label array that every layer agrees on (no imports: data, labels, methods and
eval all read it).

Masks are uint8 class indices 0..C-1. A partial annotation (a scribble) marks the pixels nobody
annotated with ``UNANNOTATED``, distinct from background (0); losses skip those pixels, the Dice that
ranks samples counts only annotated ones, and a correction may replace them by a full prediction.
"""

UNANNOTATED = 255
