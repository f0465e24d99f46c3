"""One long-lived thread for all of the explorer's model work.

werkzeug serves each request from a thread of its own. Model calls must not follow them there: inductor keeps a
compiled tower's CUDA-graph state in a thread-local of the thread that first ran it (:mod:`dense.compiled`), and one
model serves one call at a time. So every call that touches the model runs here, in the order asked, and the request
threads wait for their answers.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor


class ModelThread:
    """``call(fn, *args)`` runs ``fn`` on this object's one thread and returns (or raises) what it does; a call made
    from that thread itself runs at once (so model work may call other model work)."""

    def __init__(self, name: str = "dense-model"):
        self.ident: int | None = None  # the thread's id, once it has started
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=self._started)

    def _started(self) -> None:
        self.ident = threading.get_ident()

    def call(self, fn, *args, **kwargs):
        if threading.get_ident() == self.ident:
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """Finish the call under way, drop the queued ones, and end the thread."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def on_model_thread(method):
    """A method of an object with a ``worker`` (:class:`ModelThread`), run on that thread."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return self.worker.call(method, self, *args, **kwargs)

    return run
