"""The server behind ``dense explore``: a Flask app over one :class:`Explorer` (the images, their features, answers).

Every answer comes from the library's public functions, the same ones a notebook calls: :func:`dense.similarity
.similarity_maps`, :func:`dense.heatmap.patch_scores`, :class:`dense.refer.Localizer`, :func:`dense.openvocab
.segment`, :meth:`dense.FeatureMap.pca_rgb`; heatmaps are drawn by :func:`dense.viz.heat_overlay` on the figures'
fixed 0..1 scale. Features are extracted once per image (on first view) and kept in memory, and in the on-disk
:class:`dense.cache.FeatureCache` when a cache folder is given, so a click or a query answers from memory.

Safety: the app serves only the image files found under the folder at start (symlinks that resolve outside it are left
out), by exact name; any other path is a 404, whatever its spelling. JSON requests are checked before any model work:
an unknown image is a 404, a malformed request (a point outside the image, an empty or over-long query, a block the
features do not hold) a 400 with one line saying which field, an image that cannot be read a 422 naming the file.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dense.cache import FeatureCache
from dense.preprocess import IMAGE_EXTS

STATIC = Path(__file__).with_name("static")
VIEW_MAX = 768  # long side, in pixels, of the images and overlays the page shows (answers stay in original pixels)
MAX_TEXT_CHARS = 200  # one query, expression or class name
MAX_TEXTS = 16  # queries or classes per request
MAX_BODY_BYTES = 64 * 1024  # a JSON request body; larger ones get 413 before they are parsed
MAX_IMAGES = 64  # images the page shows by default (the first ones, by name)

log = logging.getLogger("dense")


class RequestError(ValueError):
    """A request the server refuses: ``status`` (4xx) and one line naming the field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def image_files(images_dir: str | os.PathLike) -> dict[str, Path]:
    """``{relative posix name: path}`` of every image file under ``images_dir`` whose real path stays inside it."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{images_dir}: not a folder")
    real_root = root.resolve()
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTS or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        try:
            real = p.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling or looping symlink
            continue
        if real.is_file() and real.is_relative_to(real_root):
            out[p.relative_to(root).as_posix()] = real
    return out


def view_hw(image_hw: tuple[int, int], view_max: int = VIEW_MAX) -> tuple[int, int]:
    """The size the page shows an image at: ``image_hw`` scaled so its long side is at most ``view_max``."""
    H, W = image_hw
    s = min(1.0, view_max / max(H, W))
    return max(1, round(H * s)), max(1, round(W * s))


def png_data_url(rgb: np.ndarray) -> str:
    """uint8 ``[H, W, 3]`` RGB -> ``data:image/png;base64,...``."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def png_bytes(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _resize(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    import cv2

    if rgb.shape[:2] == tuple(size_hw):
        return rgb
    return cv2.resize(rgb, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA)


def _round(values, digits: int = 2) -> list:
    return [round(float(v), digits) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


class Explorer:
    """One image folder and one encoder: features extracted on first use, answers as JSON-ready dicts.

    ``encoder``: a loaded :class:`~dense.encoder.Encoder`. ``cache``: a feature-cache root folder (optional).
    ``layers``: blocks to extract, for similarity (``None``: the last block and what ``method`` needs).
    ``method``: heatmap method (None: the encoder's calibration). ``max_images``: images shown, the first by name.
    """

    def __init__(self, encoder, images_dir: str | os.PathLike, *, cache: str | os.PathLike | None = None,
                 max_patches: int | None = None, layers: Sequence[int] | None = None, method: str | None = None,
                 max_images: int | None = MAX_IMAGES, view_max: int = VIEW_MAX):
        from dense.features import block_indices
        from dense.heatmap import layers_for, method_of

        self.encoder = encoder
        self.images_dir = Path(images_dir)
        found = image_files(images_dir)
        self.total_images = len(found)
        self.files = dict(list(found.items())[:max_images] if max_images else found.items())
        self.method = method_of(encoder, method)
        need = set(layers_for(encoder, [self.method])) | {-1} | set(layers or ())
        self.layers = tuple(sorted(set(block_indices(tuple(need), encoder.num_layers))))
        self.max_patches = max_patches
        self.view_max = view_max
        self.cache = None
        if cache is not None:
            self.cache = FeatureCache.for_encoder(cache, encoder, max_patches=max_patches, layers=self.layers,
                                                  dataset=self.images_dir)
        self._lock = threading.RLock()  # one model call at a time; the dicts below are filled under it
        self._fmaps: dict = {}
        self._views: dict[str, np.ndarray] = {}
        self._errors: dict[str, str] = {}
        self._localizers: dict = {}
        self._pca: dict[str, str] = {}

    # --- features ---------------------------------------------------------------------------------------------------
    def _check_name(self, name) -> str:
        if not isinstance(name, str) or name not in self.files:
            raise RequestError(f"image {str(name)[:80]!r}: not one of the images served", 404)
        return name

    def features(self, name: str):
        """The FeatureMap of image ``name`` (with aligned tokens), extracted on first use; :class:`RequestError` 422
        naming the file when it cannot be read."""
        from dense.errors import ImageError
        from dense.heatmap import with_aligned
        from dense.preprocess import load_image

        self._check_name(name)
        with self._lock:
            if name in self._fmaps:
                return self._fmaps[name]
            if name in self._errors:
                raise RequestError(self._errors[name], 422)
            try:
                rgb = load_image(self.files[name])
            except ImageError as e:
                self._errors[name] = f"{name}: {str(e).removeprefix(str(self.files[name]) + ': ')}"
                raise RequestError(self._errors[name], 422) from None
            fmap = self.cache.get(name) if self.cache is not None else None
            if fmap is not None and fmap.image_hw != rgb.shape[:2]:
                fmap = None  # the file changed size since it was cached
            if fmap is None:
                fmap = self.encoder.extract(rgb, max_patches=self.max_patches, layers=self.layers)
                if self.cache is not None:
                    self.cache.init()
                    self.cache.put(name, fmap)
            self._fmaps[name] = with_aligned(self.encoder, fmap, self.method)
            self._views[name] = _resize(rgb, view_hw(rgb.shape[:2], self.view_max))
            return self._fmaps[name]

    def view(self, name: str) -> np.ndarray:
        """The image as the page shows it: uint8 ``[h, w, 3]``, long side at most ``view_max``."""
        self.features(name)
        return self._views[name]

    # --- answers ----------------------------------------------------------------------------------------------------
    def listing(self) -> dict:
        return {"model": self.encoder.name, "folder": str(self.images_dir), "method": self.method,
                "total": self.total_images, "images": [{"name": n} for n in self.files],
                "layers": list(self.layers), "patch_size": self.encoder.patch_size}

    def info(self, name: str) -> dict:
        """Geometry of image ``name`` and its PCA view (extracting it on first use)."""
        t0 = time.perf_counter()
        fmap = self.features(name)
        with self._lock:
            if name not in self._pca:
                h, w = self._views[name].shape[:2]
                self._pca[name] = png_data_url(fmap.pca_rgb(size_hw=(h, w)))
        H, W = fmap.image_hw
        return {"name": name, "image_hw": [H, W], "view_hw": list(self._views[name].shape[:2]),
                "grid_hw": list(fmap.grid_hw), "patch_size": fmap.patch_size, "layers": list(fmap.layers),
                "pca": self._pca[name], "seconds": round(time.perf_counter() - t0, 4)}

    def _names(self, names) -> list[str]:
        if names is None:
            return [n for n in self.files if n not in self._errors]
        if not isinstance(names, list) or len(names) > len(self.files):
            raise RequestError(f"images must be a list of at most {len(self.files)} image names")
        return [self._check_name(n) for n in dict.fromkeys(names)]

    def _ready(self, names: list[str]) -> list[str]:
        """The images of ``names`` that can be read (features extracted now if need be); unreadable ones are skipped."""
        out = []
        for n in names:
            try:
                self.features(n)
                out.append(n)
            except RequestError as e:
                if e.status != 422:
                    raise
        return out

    def similarity(self, name: str, point_xy, *, layer: int = -1, images: list[str] | None = None) -> dict:
        """Cosine similarity of the patch under ``point_xy`` (pixels of image ``name``) to every patch of ``images``."""
        from dense.features import block_indices
        from dense.preprocess import grid_cell_xyxy
        from dense.similarity import check_point_xy, similarity_maps
        from dense.viz import heat_overlay

        source = self.features(self._check_name(name))
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
        with self._lock:
            targets = [self._fmaps[n] for n in names]
            sims = similarity_maps(source, xy, targets, layer=block)
            results = []
            for k, n in enumerate(names):
                view = self._views[n]
                up = sims.to_image(k, view.shape[:2]).numpy()  # [h, w] cosine
                results.append({"image": n, "overlay": png_data_url(heat_overlay(view, up, vmin=0.0, vmax=1.0)),
                                "peak_ij": sims.peak_ij[k].tolist(), "peak_xy": _round(sims.peak_xy[k]),
                                "peak_score": round(float(sims.peak_scores[k]), 4)})
        cell = grid_cell_xyxy(sims.patch_ij, source.image_hw, source.resized_hw, source.patch_size)
        return {"image": name, "point_xy": _round(xy), "patch_ij": sims.patch_ij.tolist(), "layer": block,
                "patch_box_xyxy": _round(cell), "results": results}

    def heatmaps(self, queries: list[str], *, images: list[str] | None = None) -> dict:
        """Text queries -> per image and query, the heatmap drawn over the image and its peak."""
        from dense.heatmap import patch_scores, to_image
        from dense.viz import heat_overlay

        names = self._ready(self._names(images))
        results = []
        with self._lock:
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

    def localize(self, expression: str, *, images: list[str] | None = None) -> dict:
        """A referring expression -> per image: box, point, score, and whether it was found (above threshold)."""
        from dense.refer import Localizer

        names = self._ready(self._names(images))
        results = []
        with self._lock:
            for n in names:
                if n not in self._localizers:
                    self._localizers[n] = Localizer(self.encoder, self._fmaps[n], method=self.method)
                loc = self._localizers[n].localize(expression)
                found = bool(loc.found)
                results.append({"image": n, "box_xyxy": _round(loc.box_xyxy), "point_xy": _round(loc.point_xy),
                                "score": round(float(loc.score), 4), "found": found})
        return {"expression": expression, "results": results}

    def segment(self, classes: list[str], *, images: list[str] | None = None) -> dict:
        """A class list -> per image, the label map painted over the image, and the classes present."""
        import cv2

        from dense.openvocab import segment
        from dense.viz import _paint, class_colours

        colours = class_colours(classes)  # [K, 3] in [0, 1]
        names = self._ready(self._names(images))
        results = []
        with self._lock:
            for n in names:
                view = self._views[n]
                labels = segment(self.encoder, self._fmaps[n], classes, method=self.method)  # int32 [H, W]
                small = cv2.resize(labels, (view.shape[1], view.shape[0]), interpolation=cv2.INTER_NEAREST)
                painted = (_paint(view, small, colours, 0.85) * 255 + 0.5).clip(0, 255).astype(np.uint8)
                present = sorted(int(v) for v in np.unique(labels) if v > 0)
                results.append({"image": n, "overlay": png_data_url(painted),
                                "present": [classes[k - 1] for k in present]})
        legend = [{"name": c, "colour": "#" + "".join(f"{round(255 * v):02x}" for v in col)}
                  for c, col in zip(classes, colours, strict=True)]
        return {"classes": classes, "legend": legend, "results": results}


# -------------------------------------------------------------------------------------------------------------------
# The app


def _texts(body: dict, key: str, *, many: bool) -> list[str]:
    """Non-empty strings of at most ``MAX_TEXT_CHARS`` each (one, or up to ``MAX_TEXTS``), from ``body[key]``."""
    value = body.get(key)
    values = value if many and isinstance(value, list) else [value]
    if not values or len(values) > (MAX_TEXTS if many else 1):
        raise RequestError(f"{key}: give 1 to {MAX_TEXTS if many else 1} texts")
    out = []
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise RequestError(f"{key}: an empty text")
        if len(v) > MAX_TEXT_CHARS:
            raise RequestError(f"{key}: a text of {len(v)} characters (at most {MAX_TEXT_CHARS})")
        out.append(v.strip())
    return out


def create_app(explorer: Explorer):
    """The Flask app serving ``explorer``: the page, its static files, the images, and the JSON API."""
    from flask import Flask, Response, abort, jsonify, request, send_from_directory
    from werkzeug.exceptions import HTTPException

    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.url_map.merge_slashes = False  # "/images//etc/passwd" is a 404, not a redirect to "/images/etc/passwd"
    app.json.sort_keys = False

    @app.errorhandler(RequestError)
    def _refused(e: RequestError):
        return jsonify(error=str(e)), e.status

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        return jsonify(error=f"{e.code} {e.name}"), e.code

    @app.errorhandler(Exception)
    def _failed(e: Exception):  # the page shows the line; the server goes on
        log.exception("dense explore: %s %s failed", request.method, request.path)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return jsonify(error=f"{type(e).__name__}: {first}"), 500

    def body() -> dict:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise RequestError("the request body must be a JSON object")
        return data

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html")

    @app.get("/images/<path:name>")
    def image(name: str):
        if name not in explorer.files:  # the only names served: those found at start, inside the folder
            abort(404)
        try:
            rgb = explorer.view(name)
        except RequestError as e:
            return Response(str(e), status=e.status, mimetype="text/plain")
        return Response(png_bytes(rgb), mimetype="image/png", headers={"Cache-Control": "no-cache"})

    @app.get("/api/images")
    def listing():
        return jsonify(explorer.listing())

    @app.get("/api/image")
    def info():
        return jsonify(explorer.info(explorer._check_name(request.args.get("name"))))

    @app.get("/api/colourbar.png")
    def colourbar():
        from dense.viz import heat_overlay

        ramp = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (12, 1))  # [12, 256]: 0 at the left, 1 right
        grey = np.full((12, 256, 3), 128, np.uint8)  # the overlay's colours over a mid-grey image
        return Response(png_bytes(heat_overlay(grey, ramp, vmin=0.0, vmax=1.0)), mimetype="image/png")

    @app.post("/api/similarity")
    def similarity():
        b = body()
        return jsonify(explorer.similarity(b.get("image"), b.get("point_xy"), layer=b.get("layer", -1),
                                           images=b.get("images")))

    @app.post("/api/heatmap")
    def heatmap():
        b = body()
        queries = _texts(b, "queries", many=True)
        return jsonify(explorer.heatmaps(queries, images=b.get("images")))

    @app.post("/api/localize")
    def localize():
        b = body()
        expression = _texts(b, "expression", many=False)[0]
        return jsonify(explorer.localize(expression, images=b.get("images")))

    @app.post("/api/segment")
    def segment():
        b = body()
        classes = _texts(b, "classes", many=True)
        return jsonify(explorer.segment(classes, images=b.get("images")))

    return app


# -------------------------------------------------------------------------------------------------------------------
# Serving


def is_loopback(host: str) -> bool:
    """Is ``host`` a loopback address (or ``localhost``)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """A running server (werkzeug's threaded WSGI server) for one app: ``url``, ``close()``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self._server = make_server(host, port, app, threaded=True)
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        self._server.serve_forever()

    def start(self) -> Server:
        """Serve from a daemon thread; returns self."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="dense-explore", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Server({self.url})"


def make_server(model, images: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 0,
                cache: str | os.PathLike | None = None, max_patches: int | None = None,
                layers: Sequence[int] | None = None, method: str | None = None, max_images: int | None = MAX_IMAGES,
                dtype: str = "auto", device: str = "cpu") -> tuple[Server, Explorer]:
    """An :class:`Explorer` of ``images`` for ``model`` (a name/folder for :func:`dense.load_encoder`, or an Encoder)
    and a (not yet started) :class:`Server` bound to ``host:port`` (port 0: a free one)."""
    if isinstance(model, (str, os.PathLike)):
        from dense.encoder import load_encoder

        model = load_encoder(model, dtype=dtype, device=device)
    explorer = Explorer(model, images, cache=cache, max_patches=max_patches, layers=layers, method=method,
                        max_images=max_images)
    return Server(create_app(explorer), host, port), explorer


def describe(server: Server, explorer: Explorer) -> str:
    """The line ``dense explore`` prints when it is listening."""
    shown = len(explorer.files)
    more = f" (the first {shown} of {explorer.total_images})" if shown < explorer.total_images else ""
    return f"dense explore: {shown} images{more} from {explorer.images_dir} at {server.url}"
