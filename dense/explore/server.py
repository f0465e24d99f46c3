"""Serving ``dense explore``: werkzeug's threaded WSGI server for the app (:mod:`dense.explore.app`), in this thread
or a background one, bound to loopback unless told otherwise."""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Sequence

from dense.explore.app import create_app
from dense.explore.explorer import MAX_IMAGES, Explorer


def is_loopback(host: str) -> bool:
    """Is ``host`` a loopback address (or ``localhost``)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """A running server (werkzeug's threaded WSGI server) for one app: ``url``, ``close()``. ``explorer``: closed
    with the server when given (its model thread ends)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, explorer: Explorer | None = None):
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self._server = make_server(host, port, app, threaded=True)
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None
        self._explorer = explorer

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
        if self._explorer is not None:
            self._explorer.close()

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
    and a (not yet started) :class:`Server` bound to ``host:port`` (port 0: a free one). A folder with no image file
    is a ``ValueError`` naming it, before the model loads."""
    from dense.preprocess import image_files, no_images_error

    if not image_files(images):
        raise no_images_error(images)
    if isinstance(model, (str, os.PathLike)):
        from dense.encoder import load_encoder

        model = load_encoder(model, dtype=dtype, device=device)
    explorer = Explorer(model, images, cache=cache, max_patches=max_patches, layers=layers, method=method,
                        max_images=max_images)
    return Server(create_app(explorer), host, port, explorer=explorer), explorer


def describe(server: Server, explorer: Explorer) -> str:
    """The line ``dense explore`` prints when it is listening."""
    shown = len(explorer.files)
    more = f" (the first {shown} of {explorer.total_images})" if shown < explorer.total_images else ""
    return f"dense explore: {shown} images{more} from {explorer.images_dir} at {server.url}"
