"""One way to open a dataset's splits, for every evaluator and for extraction: :func:`open_data`.

    >>> from dense.eval.data import open_data
    >>> data = open_data(ann="shapes/annotations.json", images="shapes/images", splits=["val"])  # checked now
    >>> data = open_data("voc", root="VOCdevkit/VOC2012")                   # a dense.segdata dataset by name
    >>> data = open_data(images="photos")                                   # a folder: every image, no labels
    >>> ds, sub = data.open("val")          # the dataset object and the split within it
    >>> data.items("val")                   # [(cache key, image path)], what dense.extract fills a cache with

A source is one of: COCO instances file(s) + image folder(s) (``ann`` + ``images``: one file whose images carry a
``split`` field, or ``{split: file}`` / ``SPLIT=FILE`` strings, one per split), a :mod:`dense.segdata` dataset by
name + ``root``, a folder of images (``images`` alone; no splits, no labels), or a dataset object already built (a
:mod:`dense.coco` / :mod:`dense.segdata` dataset, or ``{split: dataset}``). ``refs`` adds RefCOCO-style referring
expressions to a COCO source. Opening reads and validates the annotation files at once, and checks each split of
``splits`` (that it holds images, and its label files' headers), so a command opens its data BEFORE it loads the
model: a missing split, a corrupt file, an empty folder fail in a second, not after the model is built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dense.errors import InputError

ALL = "all"  # the split name meaning every image (as None)


@dataclass
class Data:
    """The opened splits of one source (build it with :func:`open_data`).

    Attributes:
        kind: ``"coco"`` (annotation files), ``"named"`` (a :mod:`dense.segdata` dataset by name), ``"folder"`` (images
            alone) or ``"given"`` (dataset objects passed in).
        what: the source in words, for messages and ``Result.meta["data"]``.
        name: the :mod:`dense.segdata` name (``"named"`` sources), else None.
        by_split: ``{split or None: dataset}``; None holds a dataset that has every split (its images' own field).
        refs: the referring-expression file of a COCO source, or None.
        folder: the image folder of a ``"folder"`` source.
    """

    kind: str
    what: str
    by_split: dict = field(default_factory=dict)
    name: str | None = None
    refs: Path | None = None
    folder: Path | None = None
    checked: set = field(default_factory=set, repr=False)  # splits whose files were checked

    def splits(self) -> list[str]:
        """Every split the data holds (a file per split counts as its split); empty for a folder."""
        out = {s for s in self.by_split if s is not None}
        if None in self.by_split:
            out |= set(self.by_split[None].splits())
        return sorted(out)

    def dataset(self, split: str | None = None):
        """The dataset object that holds ``split`` (None or ``"all"``: the one dataset of a one-file source)."""
        return self.open(split)[0]

    def open(self, split: str | None) -> tuple[object, str | None]:
        """``(dataset, split within it)``; raises ``ValueError`` naming the splits that exist when ``split`` holds no
        image. ``split`` None or ``"all"``: every image of a one-dataset source."""
        if self.kind == "folder":
            if split not in (None, ALL):
                raise InputError(f"{self.what}: a folder of images has no splits (asked for {split!r}); give --ann or "
                                 "--dataset for splits")
            return None, None
        if split in (None, ALL):
            if None not in self.by_split:
                raise InputError(f"{self.what}: one file per split ({', '.join(self.splits())}): name the split")
            ds, sub = self.by_split[None], None
        elif split in self.by_split:
            ds, sub = self.by_split[split], None  # a dataset given for this split holds it whole
        elif None in self.by_split:
            ds, sub = self.by_split[None], split
        else:
            ds, sub = None, split
        ids = []
        if ds is not None:
            try:
                ids = ds.ids(sub)  # a reader whose split list is missing raises naming the file it looked for
            except KeyError as e:
                if e.args and isinstance(e.args[0], str) and " " in e.args[0]:  # the reader's own explanation
                    raise InputError(e.args[0]) from None
                ids = []
        if not ids:
            present = self.splits()
            hint = "" if present else " (its images carry no 'split' field: give one file per split, " \
                                      "e.g. --ann train=FILE)"
            where = "the dataset" if sub is None and split in (None, ALL) else f"split {split!r}"
            raise InputError(f"{self.what}: no images in {where}; splits present: {', '.join(present) or 'none'}"
                             f"{hint if split not in (None, ALL) else ''}")
        return ds, sub

    def check(self, split: str | None, *, progress: bool = False) -> None:
        """:meth:`open` ``split`` and read its label files' headers (channels, bit depth, size against the image)."""
        ds, sub = self.open(split)
        if split in self.checked:
            return
        if self.kind == "folder":
            if not self.items(None):
                from dense.preprocess import no_images_error

                raise no_images_error(self.folder)
            return
        if hasattr(ds, "check_files"):
            for s in [sub] if sub is not None else sorted(ds.splits()):
                ds.check_files(s, progress=progress)
        self.checked.add(split)

    def ids(self, split: str | None) -> list:
        ds, sub = self.open(split)
        return ds.ids(sub)

    def items(self, split: str | None = None) -> list[tuple[str, Path]]:
        """``(cache key, image path)`` of every image of ``split`` (a folder: every image under it), the pairs
        :func:`dense.extract.extract_to_cache` takes."""
        if self.kind == "folder":
            from dense.extract import folder_items

            return folder_items(self.folder)
        from dense.extract import dataset_items

        ds, sub = self.open(split)
        return dataset_items(ds, sub)

    def class_names(self, split: str | None = None) -> list[str]:
        return list(self.dataset(split).class_names)

    def load_refs(self, split: str | None):
        """The referring expressions of ``split`` (None or ``"all"``: every split), joined with the COCO file;
        raises naming the splits that hold expressions when ``split`` holds none."""
        if self.refs is None:
            raise InputError(f"{self.what}: no referring expressions: give refs= (--refs)")
        from dense.coco import load_refs

        ds = self.by_split.get(None) or next(iter(self.by_split.values()))
        every = load_refs(self.refs, ds)
        split = None if split == ALL else split
        out = [r for r in every if split is None or r.split == split]
        if not out:
            present = sorted({r.split for r in every})
            raise InputError(f"{self.refs}: no referring expressions in "
                             f"{'any split' if split is None else f'split {split!r}'}; splits present: "
                             f"{', '.join(present) or 'none'}")
        return out

    def describe(self) -> str:
        return self.what


def open_data(source=None, *, ann=None, images=None, root=None, refs=None, splits: Sequence[str | None] = (),
              on_error: str = "raise", progress: bool = False) -> Data:
    """Open a data source (see the module docstring) and check each of ``splits`` (None / ``"all"``: every image).

    ``source``: a :class:`Data` (returned as is, after checking ``splits``), a :mod:`dense.segdata` name (with
    ``root``), a dataset object or a ``{split: dataset}`` mapping. ``ann`` / ``images`` / ``refs``: COCO files and
    folders (``SPLIT=PATH`` strings, or ``{split: path}``, for one per split). ``images`` alone: a folder.
    ``on_error="skip"`` drops bad annotations (listed in the dataset's ``problems``) instead of raising.

    Raises ``ValueError`` (a split without images, naming those that exist; a source given two ways),
    ``FileNotFoundError`` (a path that is not there) or :class:`dense.coco.AnnotationError` (a file that does not
    parse), each naming the input.
    """
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if isinstance(source, Data):
        if any(v is not None for v in (ann, images, root, refs)):
            raise InputError("data already opened: give no ann=, images=, root= or refs= beside it")
        data = source
    elif ann is not None:
        if source is not None or root is not None:
            raise InputError("give the data one way: ann= (--ann) with images= (--images), or a dataset name with "
                             "root= (--dataset, --root)")
        data = _open_coco(ann, images, refs, on_error)
    elif isinstance(source, (str, os.PathLike)) and source is not None:
        if images is not None or refs is not None:
            raise InputError(f"the dataset {source!r} is read from root= (--root); give no images= or refs=")
        data = _open_named(str(source), root)
    elif source is not None:
        if any(v is not None for v in (images, root, refs)):
            raise InputError("a dataset object carries its own images: give no images=, root= or refs= beside it")
        data = _open_given(source)
    elif images is not None:
        if refs is not None or root is not None:
            raise InputError("a folder of images (images= alone) takes no refs= or root=: give ann= for annotations")
        data = _open_folder(images)
    else:
        raise InputError("no data: give ann= (--ann) with images= (--images), a dataset name with root= (--dataset, "
                         "--root), or images= (--images) alone for a folder")
    for s in splits:
        data.check(s, progress=progress)
    return data


def _open_coco(ann, images, refs, on_error: str) -> Data:
    from dense.coco import load_coco

    if images is None:
        raise InputError("no image folder for the annotations: give images= (--images)")
    anns = per_split(ann, "annotation file (--ann)")
    folders = per_split(images, "image folder (--images)")
    by_split = {}
    for split, path in anns.items():
        folder = folders.get(split, folders.get(None))
        if folder is None:
            raise InputError(f"no image folder for split {split!r}: give images= (--images {split}=DIR)")
        if not Path(folder).is_dir():
            raise FileNotFoundError(2, "image folder (--images) is not a folder", str(folder))
        if not Path(path).is_file():
            raise FileNotFoundError(2, "annotation file (--ann) is not a file", str(path))
        by_split[split] = load_coco(path, folder, on_error=on_error)  # parsed and validated now
    refs_path = None
    if refs is not None:
        refs_path = Path(refs)
        if not refs_path.is_file():
            raise FileNotFoundError(2, "referring expressions (--refs): no such file", str(refs))
        if None not in by_split:
            raise InputError("referring expressions (--refs) go with one annotation file (--ann FILE), not one per "
                             "split")
    what = ", ".join(f"{s}={p}" if s else str(p) for s, p in anns.items())
    return Data("coco", what, by_split, refs=refs_path)


def _open_named(name: str, root) -> Data:
    from dense.segdata import load_dataset

    if root is None:
        raise InputError(f"the dataset {name!r} needs its root folder: give root= (--root)")
    return Data("named", f"{name} at {root}", {None: load_dataset(name, root)}, name=name)


def _open_given(dataset) -> Data:
    if isinstance(dataset, Mapping):
        return Data("given", "datasets of splits " + ", ".join(map(str, dataset)), dict(dataset))
    where = getattr(dataset, "root", None) or getattr(dataset, "source", None)
    return Data("given", str(where or type(dataset).__name__), {None: dataset})


def _open_folder(images) -> Data:
    if isinstance(images, (list, tuple, Mapping)):
        raise InputError("a folder of images is one folder (images=DIR)")
    folder = Path(images)
    if not folder.is_dir():
        raise FileNotFoundError(2, "image folder (--images) is not a folder", str(folder))
    return Data("folder", str(folder), {}, folder=folder)


def per_split(value, what: str) -> dict[str | None, object]:
    """A path (every split) or ``{split: path}``; strings ``SPLIT=PATH`` (the command line's) are read as the latter.
    Every path must exist."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        out = {str(k) if k is not None else None: v for k, v in value.items()}
    else:
        out = {}
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            split, sep, path = str(v).partition("=")
            key, path = (split, path) if sep and not Path(str(v)).exists() else (None, v)
            if key in out:
                raise InputError(f"{what} given twice for {'all splits' if key is None else f'split {key!r}'}")
            out[key] = path
    for path in out.values():
        if not Path(path).exists():
            raise FileNotFoundError(2, f"{what}: no such file or folder", str(path))
    return out


def check_cache_root(cache) -> Path:
    """``cache`` as a cache root: a folder, or a path where one can be made; a file there raises naming it."""
    path = Path(cache)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(20, "the cache (--cache) must be a folder; this is a file", str(p))
            break
    return path


__all__ = ["Data", "open_data", "per_split", "check_cache_root", "ALL"]
