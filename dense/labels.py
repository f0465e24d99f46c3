"""The label convention that dataset readers, metrics, probes and figures share.

A label map is a signed integer numpy array ``[H, W]``: ``0..K-1`` are classes (0 is background where a dataset has
one), :data:`IGNORE` marks pixels no metric counts. Readers produce it, metrics and probes consume it, figures draw it.
"""

from __future__ import annotations

import numpy as np

from dense.errors import InputError

IGNORE = -1  # label value no metric counts (crowd regions, VOC boundaries, ADE20K "other"); never a class index


def label_dtype(num_classes: int) -> np.dtype:
    """The narrowest signed integer type that holds labels ``0..num_classes-1`` and :data:`IGNORE`.

    Label maps are signed so that the ignore value can never be a class: v0.1's uint8 maps with 255 = ignore wrapped
    ADE-847 and Context-459 (a stored 300 became 44) and turned a 256th COCO category into "ignore".
    """
    for dt in (np.int8, np.int16, np.int32):
        if num_classes - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise InputError(f"{num_classes} classes do not fit an int32 label map")


def as_numpy(x) -> np.ndarray:
    """A label map, score map, box or point array as numpy: a torch tensor is detached and brought to the CPU (without
    importing torch), anything else goes through ``np.asarray``."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)
