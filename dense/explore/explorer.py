"""The state behind ``dense explore``: one image folder and one encoder, and its answers as JSON-ready dicts.

Every answer comes from the library's public functions, the same ones a notebook calls: :func:`dense.similarity
.similarity_maps`, :func:`dense.heatmap.patch_scores`, :class:`dense.refer.Localizer`, :func:`dense.openvocab
.segment`, :func:`dense.features.pca_rgb_shared`; heatmaps are drawn by :func:`dense.viz.heat_overlay` on the
figures' fixed 0..1 scale, label maps by :func:`dense.viz.paint_labels`. Features are extracted once per image (on
first view) and kept in memory, and in the on-disk :class:`dense.cache.FeatureCache` when a cache folder is given, so
a click or a query answers from memory. All model work runs on one thread (:mod:`dense.explore.worker`).

Requests are checked before any model work: an unknown image is a 404, a malformed request (a point outside the
image, a block the features do not hold) a 400 with one line saying which field, an image that cannot be read a 422
naming the file (:class:`RequestError`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dense.cache import FeatureCache
from dense.explore.pictures import VIEW_MAX, png_data_url, resize_rgb, view_hw
from dense.explore.worker import ModelThread, on_model_thread
from dense.preprocess import image_files, no_images_error

MAX_IMAGES = 64  # images the page shows by default (the first ones, by name)
RING_MIN_COSINE = 0.5  # the page rings an image's best patch only from this cosine (the middle of its 0..1 scale)


class RequestError(ValueError):
    """A request the server refuses: ``status`` (4xx) and one line naming the field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _round(values, digits: int = 2) -> list:
    return [round(float(v), digits) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _hex(rgb) -> str:
    """RGB in [0, 1] -> ``#rrggbb``."""
    return "#" + "".join(f"{round(255 * float(v)):02x}" for v in rgb)


class Explorer:
    """One image folder and one encoder: features extracted on first use, answers as JSON-ready dicts.

    ``encoder``: a loaded :class:`~dense.encoder.Encoder`. ``cache``: a feature-cache root folder (optional).
    ``layers``: blocks to extract, for similarity (``None``: the last block and what ``method`` needs).
    ``method``: heatmap method (None: the encoder's calibration). ``max_images``: images shown, the first by name.
    ``batch_size``: images extracted per pass when several are prepared together (:meth:`prepare`).
    A folder with no image file is a ``ValueError`` naming it. :meth:`close` ends the model thread.
    """

    def __init__(self, encoder, images_dir: str | os.PathLike, *, cache: str | os.PathLike | None = None,
                 max_patches: int | None = None, layers: Sequence[int] | None = None, method: str | None = None,
                 max_images: int | None = MAX_IMAGES, view_max: int = VIEW_MAX, batch_size: int = 8):
        from dense.features import block_indices
        from dense.heatmap import layers_for, method_of

        found = image_files(images_dir)
        if not found:
            raise no_images_error(images_dir)
        self.encoder = encoder
        self.images_dir = Path(images_dir)
        self.total_images = len(found)
        self.files = dict(list(found.items())[:max_images] if max_images else found.items())
        self.method = method_of(encoder, method)
        need = set(layers_for(encoder, [self.method])) | {-1} | set(layers or ())
        self.layers = tuple(sorted(set(block_indices(tuple(need), encoder.num_layers))))
        self.max_patches = max_patches
        self.view_max = view_max
        self.batch_size = batch_size  # images per extraction pass (prepare)
        self.cache = None
        if cache is not None:
            self.cache = FeatureCache.for_encoder(cache, encoder, max_patches=max_patches, layers=self.layers,
                                                  dataset=self.images_dir)
        self.worker = ModelThread()  # every model call runs there; the dicts below are filled there only
        self._fmaps: dict = {}
        self._views: dict[str, np.ndarray] = {}
        self._errors: dict[str, str] = {}
        self._localizers: dict = {}
        self._pca: tuple[tuple[str, ...], list[str]] | None = None  # the last shared-basis answer: (names, URLs)

    def close(self) -> None:
        self.worker.close()

    # --- features ---------------------------------------------------------------------------------------------------
    def check_name(self, name) -> str:
        """``name`` if it is one of the images served, else :class:`RequestError` 404."""
        if not isinstance(name, str) or name not in self.files:
            raise RequestError(f"image {str(name)[:80]!r}: not one of the images served", 404)
        return name

    @on_model_thread
    def features(self, name: str):
        """The FeatureMap of image ``name`` (with aligned tokens), extracted on first use; :class:`RequestError` 422
        naming the file when it cannot be read."""
        self.check_name(name)
        if name not in self._fmaps:
            self.prepare([name])
        if name in self._errors:
            raise RequestError(self._errors[name], 422)
        return self._fmaps[name]

    @on_model_thread
    def prepare(self, images: list[str]) -> dict:
        """Features of ``images`` (names served), those not held yet read from the cache or extracted together, in
        batches of :attr:`batch_size` (:meth:`dense.Encoder.extract_many`). Unreadable images are remembered with
        the error naming them. Returns ``{"ready": [...], "errors": {name: message}}`` for ``images``."""
        from dense.errors import ImageError
        from dense.heatmap import with_aligned
        from dense.preprocess import load_image

        names = self._names(images) if images is not None else list(self.files)
        todo: dict[str, np.ndarray] = {}
        for name in names:
            if name in self._fmaps or name in self._errors:
                continue
            try:
                todo[name] = load_image(self.files[name])  # uint8 [H, W, 3]
            except ImageError as e:
                self._errors[name] = f"{name}: {str(e).removeprefix(str(self.files[name]) + ': ')}"
        cached = {n: self.cache.get(n) if self.cache is not None else None for n in todo}
        cached = {n: f for n, f in cached.items() if f is not None and f.image_hw == todo[n].shape[:2]}  # same size
        missing = [n for n in todo if n not in cached]
        fresh = self.encoder.extract_many([todo[n] for n in missing], max_patches=self.max_patches,
                                          layers=self.layers, batch_size=self.batch_size, progress=False)
        for name, fmap in zip(missing, fresh, strict=True):
            if self.cache is not None:
                self.cache.init()
                self.cache.put(name, fmap)
            cached[name] = fmap
        for name, rgb in todo.items():
            self._fmaps[name] = with_aligned(self.encoder, cached[name], self.method)
            self._views[name] = resize_rgb(rgb, view_hw(rgb.shape[:2], self.view_max))
        return {"ready": [n for n in names if n in self._fmaps],
                "errors": {n: self._errors[n] for n in names if n in self._errors}}

    @on_model_thread
    def view(self, name: str) -> np.ndarray:
        """The image as the page shows it: uint8 ``[h, w, 3]``, long side at most ``view_max``."""
        self.features(name)
        return self._views[name]

    # --- answers ----------------------------------------------------------------------------------------------------
    def listing(self) -> dict:
        return {"model": self.encoder.name, "folder": str(self.images_dir), "method": self.method,
                "total": self.total_images, "images": [{"name": n} for n in self.files],
                "layers": list(self.layers), "patch_size": self.encoder.patch_size, "batch_size": self.batch_size}

    @on_model_thread
    def info(self, name: str) -> dict:
        """Geometry of image ``name`` (extracting it on first use): pixels and patches, both as (rows, cols)."""
        t0 = time.perf_counter()
        fmap = self.features(name)
        H, W = fmap.image_hw
        return {"name": name, "image_hw": [H, W], "view_hw": list(self._views[name].shape[:2]),
                "grid_hw": list(fmap.grid_hw), "patch_size": fmap.patch_size, "layers": list(fmap.layers),
                "seconds": round(time.perf_counter() - t0, 4)}

    def _names(self, names) -> list[str]:
        if names is None:
            return [n for n in self.files if n not in self._errors]
        if not isinstance(names, list) or len(names) > len(self.files):
            raise RequestError(f"images must be a list of at most {len(self.files)} image names")
        return [self.check_name(n) for n in dict.fromkeys(names)]

    def _ready(self, names: list[str]) -> list[str]:
        """The images of ``names`` that can be read (features extracted now, together, if need be); unreadable ones
        are skipped."""
        return self.prepare(names)["ready"]

    @on_model_thread
    def pca(self, images: list[str] | None = None) -> dict:
        """The PCA colours of ``images`` in ONE basis (:func:`dense.features.pca_rgb_shared`): a colour means the same
        in every image shown. Recomputed when the set of images changes."""
        from dense.features import pca_rgb_shared

        names = self._ready(self._names(images))
        if not names:
            return {"basis": "shared", "images": [], "results": []}
        if self._pca is None or self._pca[0] != tuple(names):
            rgbs = pca_rgb_shared([self._fmaps[n] for n in names], sizes_hw=[self._views[n].shape[:2] for n in names])
            self._pca = (tuple(names), [png_data_url(rgb) for rgb in rgbs])
        return {"basis": "shared", "images": names,
                "results": [{"image": n, "pca": url} for n, url in zip(names, self._pca[1], strict=True)]}

    @on_model_thread
    def similarity(self, name: str, point_xy, *, layer: int = -1, images: list[str] | None = None) -> dict:
        """Cosine similarity of the patch under ``point_xy`` (pixels of image ``name``) to every patch of ``images``.

        Each result's best patch (``peak_*``) is ``consistent`` when the way back agrees: that patch's own best match
        in image ``name`` is at least as similar to the clicked patch as the peak is (a mutual nearest neighbour, as
        :func:`dense.similarity.match` keeps, always is; so is a match back to another part of the clicked object).
        ``ringed``: consistent and at least :data:`RING_MIN_COSINE` (a best patch of cosine -0.22 in an image with
        nothing like the clicked patch is consistent too: nothing in it is any closer). The page rings only those,
        and shows every peak's cosine.
        """
        from dense.features import block_indices
        from dense.preprocess import grid_cell_xyxy
        from dense.similarity import check_point_xy, similarity_maps
        from dense.viz import heat_overlay

        source = self.features(self.check_name(name))
        try:
            xy = check_point_xy(source, point_xy)
        except ValueError as e:
            raise RequestError(str(e)) from None
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise RequestError(f"layer must be a block index (an integer), got {layer!r}")
        try:
            block = block_indices((layer,), self.encoder.num_layers)[0]
        except ValueError as e:
            raise RequestError(f"layer: {e}") from None
        if block not in source.layers:
            raise RequestError(f"layer {layer}: the features hold blocks {list(source.layers)} (start with --layers)")
        names = self._ready(self._names(images))
        targets = [self._fmaps[n] for n in names]
        sims = similarity_maps(source, xy, targets, layer=block)
        home = similarity_maps(source, xy, layer=block).maps[0]  # [gh, gw]: the clicked patch vs its own image
        results = []
        for k, n in enumerate(names):
            view = self._views[n]
            up = sims.to_image(k, view.shape[:2]).numpy()  # [h, w] cosine
            back_ij = similarity_maps(targets[k], sims.peak_xy[k], [source], layer=block).peak_ij[0]  # way back
            results.append({"image": n, "overlay": png_data_url(heat_overlay(view, up, vmin=0.0, vmax=1.0)),
                            "peak_ij": sims.peak_ij[k].tolist(), "peak_xy": _round(sims.peak_xy[k]),
                            "peak_score": round(float(sims.peak_scores[k]), 4),
                            "consistent": bool(home[tuple(back_ij)] >= sims.maps[k].max())})
            results[-1]["ringed"] = results[-1]["consistent"] and float(sims.peak_scores[k]) >= RING_MIN_COSINE
        cell = grid_cell_xyxy(sims.patch_ij, source.image_hw, source.resized_hw, source.patch_size)
        return {"image": name, "point_xy": _round(xy), "patch_ij": sims.patch_ij.tolist(), "layer": block,
                "patch_box_xyxy": _round(cell), "ring_min_cosine": RING_MIN_COSINE, "results": results}

    @on_model_thread
    def heatmaps(self, queries: list[str], *, images: list[str] | None = None) -> dict:
        """Text queries (each distinct one computed once) -> per image and query, the heatmap drawn over the image
        and its peak."""
        from dense.heatmap import patch_scores, to_image
        from dense.viz import heat_overlay

        queries = list(dict.fromkeys(queries))
        names = self._ready(self._names(images))
        results = []
        for n in names:
            fmap, view = self._fmaps[n], self._views[n]
            scores = patch_scores(self.encoder, fmap, queries, method=self.method)  # [T, gh, gw]
            up = to_image(scores, fmap, size_hw=view.shape[:2]).numpy()  # [T, h, w]
            maps = []
            for q, s, s_up in zip(queries, scores, up, strict=True):
                i, j = divmod(int(s.argmax()), s.shape[1])
                maps.append({"query": q, "overlay": png_data_url(heat_overlay(view, s_up, vmin=0.0, vmax=1.0)),
                             "max": round(float(s.max()), 4), "peak_ij": [i, j],
                             "peak_xy": _round(fmap.grid_to_pixel_xy((i, j)))})
            results.append({"image": n, "maps": maps})
        return {"queries": queries, "method": self.method, "results": results}

    @on_model_thread
    def localize(self, expression: str, *, images: list[str] | None = None) -> dict:
        """A referring expression -> per image: box, point, score, and whether it was found (above threshold)."""
        from dense.refer import Localizer

        names = self._ready(self._names(images))
        results = []
        for n in names:
            if n not in self._localizers:
                self._localizers[n] = Localizer(self.encoder, self._fmaps[n], method=self.method)
            loc = self._localizers[n].localize(expression)
            results.append({"image": n, "box_xyxy": _round(loc.box_xyxy), "point_xy": _round(loc.point_xy),
                            "score": round(float(loc.score), 4), "found": bool(loc.found)})
        return {"expression": expression, "results": results}

    @on_model_thread
    def segment(self, classes: list[str], *, images: list[str] | None = None) -> dict:
        """A class list (each distinct class once) -> per image, the label map painted over the image, the classes
        present; the legend: each class's painted colour, then background (left unpainted: the image in grey)."""
        import cv2

        from dense.openvocab import segment
        from dense.viz import class_colours, label_swatches, paint_labels

        classes = list(dict.fromkeys(classes))
        colours = class_colours(classes)  # [K, 3] in [0, 1]
        names = self._ready(self._names(images))
        results = []
        for n in names:
            view = self._views[n]
            labels = segment(self.encoder, self._fmaps[n], classes, method=self.method)  # int32 [H, W]
            small = cv2.resize(labels, (view.shape[1], view.shape[0]), interpolation=cv2.INTER_NEAREST)
            present = sorted(int(v) for v in np.unique(labels) if v > 0)
            results.append({"image": n, "overlay": png_data_url(paint_labels(view, small, colours)),
                            "present": [classes[k - 1] for k in present], "background": bool((labels == 0).any())})
        swatches, background = label_swatches(colours)
        legend = [{"name": c, "colour": _hex(col)} for c, col in zip(classes, swatches, strict=True)]
        legend.append({"name": "background (unpainted)", "colour": _hex(background)})
        return {"classes": classes, "legend": legend, "results": results}
