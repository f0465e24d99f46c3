"""The Flask app of ``dense explore``: the page, its static files, the images, and the JSON API over an
:class:`~dense.explore.explorer.Explorer`.

Safety: the app serves only the image files found under the folder at start (symlinks that resolve outside it are left
out), by exact name; any other path is a 404, whatever its spelling. JSON bodies are checked before any model work:
over-long bodies are a 413, malformed fields a 400 with one line naming the field (texts here, the rest in the
Explorer); anything else that fails is a 500 with one line, and the server goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dense.explore.explorer import Explorer, RequestError
from dense.explore.pictures import png_bytes

STATIC = Path(__file__).with_name("static")
MAX_TEXT_CHARS = 200  # one query, expression or class name
MAX_TEXTS = 16  # queries or classes per request
MAX_BODY_BYTES = 64 * 1024  # a JSON request body; larger ones get 413 before they are parsed

log = logging.getLogger("dense")


def texts(body: dict, key: str, *, many: bool) -> list[str]:
    """Non-empty strings of at most ``MAX_TEXT_CHARS`` each (one, or up to ``MAX_TEXTS``), from ``body[key]``,
    stripped, each distinct one once (in the order given)."""
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
    return list(dict.fromkeys(out))


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
        return jsonify(explorer.info(explorer.check_name(request.args.get("name"))))

    @app.get("/api/colourbar.png")
    def colourbar():
        from dense.viz import heat_overlay

        ramp = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (12, 1))  # [12, 256]: 0 at the left, 1 right
        grey = np.full((12, 256, 3), 128, np.uint8)  # the overlay's colours over a mid-grey image
        return Response(png_bytes(heat_overlay(grey, ramp, vmin=0.0, vmax=1.0)), mimetype="image/png")

    @app.post("/api/prepare")
    def prepare():
        return jsonify(explorer.prepare(body().get("images")))

    @app.post("/api/pca")
    def pca():
        return jsonify(explorer.pca(images=body().get("images")))

    @app.post("/api/similarity")
    def similarity():
        b = body()
        return jsonify(explorer.similarity(b.get("image"), b.get("point_xy"), layer=b.get("layer", -1),
                                           images=b.get("images")))

    @app.post("/api/heatmap")
    def heatmap():
        b = body()
        return jsonify(explorer.heatmaps(texts(b, "queries", many=True), images=b.get("images")))

    @app.post("/api/localize")
    def localize():
        b = body()
        return jsonify(explorer.localize(texts(b, "expression", many=False)[0], images=b.get("images")))

    @app.post("/api/segment")
    def segment():
        b = body()
        return jsonify(explorer.segment(texts(b, "classes", many=True), images=b.get("images")))

    return app
