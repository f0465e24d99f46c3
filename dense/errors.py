"""dense's errors: one base class and a few kinds that say what went wrong (no model code imported here).

Every error dense raises on purpose is a :class:`DenseError` whose message is one line naming the input (the file,
the image, the annotation id, the flag). Each kind is also the builtin it always was (``ValueError``,
``FileNotFoundError``, ``OSError``, ``KeyError``), so ``except ValueError`` around a dense call still catches it.
The ``dense`` command prints a DenseError (or an ``OSError`` about a file) as one line and exits 1; any other
exception is a bug and shows its traceback.

    DenseError
    ├── InputError (ValueError)           bad input: a value, a file or an entry a function cannot take
    │   ├── ImageError                    an image that cannot be read, or is not an image
    │   ├── AnnotationError               an annotation, image entry or label file that is invalid
    │   └── FormatError                   a file that is not the dense file it should be (format, version)
    ├── MismatchError (ValueError)        features, a probe, a head or an upsampler used with another encoder
    │                                     (identity) or other layers than the ones they were made with
    ├── DeviceError (ValueError)          a device this torch or this machine cannot run on
    ├── CheckpointError (OSError)         a checkpoint that cannot be found or loaded
    ├── LayoutError (FileNotFoundError)   a file or folder a dataset's layout needs is missing
    └── MissingEntryError (KeyError)      an entry that is not in the feature cache
"""

from __future__ import annotations

import os


class DenseError(Exception):
    """Base of every error dense raises on purpose: one line that names the input and says what to do."""


class InputError(DenseError, ValueError):
    """Bad input: a value, a file or an entry a function cannot take; the message names it."""


class ImageError(InputError):
    """An input image could not be read or is not a valid image; the message names the input."""


class AnnotationError(InputError):
    """An annotation or image entry is invalid; the message names the file and the ids involved."""


class FormatError(InputError):
    """A readable file that is not the dense file it should be (no dense header, another format or version, damaged
    data); the message names the file and what it should have been."""


class MismatchError(DenseError, ValueError):
    """Features, a probe, a referring head or an upsampler used with (or loaded for) another encoder identity or
    another layer set than the ones they were made with; the message says what differs."""


class DeviceError(DenseError, ValueError):
    """A device that this torch or this machine cannot run on; the message says which and what to do."""


class CheckpointError(DenseError, OSError):
    """A checkpoint could not be found or loaded; the message says which and what to do."""


class LayoutError(DenseError, FileNotFoundError):
    """A file or folder a dataset's layout needs is missing; ``str()`` is one line that names it and says what it
    is."""

    def __init__(self, path: str | os.PathLike, what: str):
        super().__init__(2, what, str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class MissingEntryError(DenseError, KeyError):
    """An entry that is not in the feature cache; ``str()`` is the message itself (not ``KeyError``'s quoted
    repr)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


__all__ = ["AnnotationError", "CheckpointError", "DenseError", "DeviceError", "FormatError", "ImageError",
           "InputError", "LayoutError", "MismatchError", "MissingEntryError"]
