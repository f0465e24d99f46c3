"""Progress bars: one choice of tqdm class for every bar dense draws.

``tqdm.auto`` picks the notebook widget in Jupyter, and without ipywidgets (the ``dev`` extra has none; the
``notebook`` extra has it) every bar then warns "IProgress not found" and falls back to text. So: the widget where
ipywidgets is installed, the plain text bar everywhere else.
"""

from __future__ import annotations

import importlib.util


def _tqdm_class():
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm as auto

        return auto
    from tqdm.std import tqdm as plain

    return plain


tqdm = _tqdm_class()

__all__ = ["tqdm"]
