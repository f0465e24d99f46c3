"""``dense explore``: a local page to click through a folder of images with dense's own functions.

The page shows the folder's images at their own aspect ratios, their PCA colours (one basis shared by the images
shown), the similarity of a clicked patch to every patch of every image (:mod:`dense.similarity`), text-query heatmaps
(:mod:`dense.heatmap`), a referring expression's box, point and score (:class:`dense.Localizer`) and open-vocabulary
segmentation (:func:`dense.segment`).

    >>> server = dense.explore.start("shapes-tiny-v2", "photos/")   # a server in a background thread
    >>> server.url                                                  # 'http://127.0.0.1:PORT/'
    >>> dense.explore.show("shapes-tiny-v2", "photos/")             # the same page inline in Jupyter (an IFrame)

From a shell: ``dense explore --model google/siglip2-so400m-patch14-384 --images photos/``. The server binds to
127.0.0.1 unless told otherwise and serves only the images found under the folder (:func:`dense.preprocess.image_files`,
the rule of every command). Modules, one job each: :mod:`~dense.explore.pictures` (sizes, PNGs),
:mod:`~dense.explore.worker` (the one thread of all model work), :mod:`~dense.explore.explorer` (state and answers),
:mod:`~dense.explore.app` (the Flask routes), :mod:`~dense.explore.server` (serving).
"""

from __future__ import annotations

import os

from dense.explore.app import create_app
from dense.explore.explorer import MAX_IMAGES, Explorer
from dense.explore.server import Server, make_server

_RUNNING: list[Server] = []  # servers started by start()/show(), kept alive with the kernel


def start(model, images: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 0, **kwargs) -> Server:
    """Serve the page for ``images`` from a background thread; returns the running :class:`Server` (``.url``,
    ``.close()``). ``model``: a name or folder for :func:`dense.load_encoder`, or an Encoder; ``kwargs``: ``cache``,
    ``max_patches``, ``layers``, ``method``, ``max_images``, ``dtype``, ``device`` (see :class:`Explorer`)."""
    server, _ = make_server(model, images, host=host, port=port, **kwargs)
    _RUNNING.append(server.start())
    return server


def show(model, images: str | os.PathLike, *, height: int = 720, **kwargs):
    """The page inline in Jupyter: an ``IPython.display.IFrame`` to a server started by :func:`start`."""
    try:
        from IPython.display import IFrame
    except ImportError as e:
        raise ImportError("dense.explore.show needs IPython (pip install ipykernel); use dense.explore.start() and "
                          "open its url otherwise") from e
    server = start(model, images, **kwargs)
    return IFrame(server.url, width="100%", height=height)


__all__ = ["start", "show", "Explorer", "Server", "create_app", "make_server", "MAX_IMAGES"]
