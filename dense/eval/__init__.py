"""One evaluator per task, each ``evaluate_*(encoder, data, *, settings) -> Result`` (flat named figures + rows).

- :mod:`dense.eval.openvocab`: open-vocabulary segmentation (mIoU, pixel accuracy, pointing) on COCO-style data;
- :mod:`dense.eval.refer`: referring-expression localization (Acc@0.5, pointing game) on RefCOCO-style refs;
- :mod:`dense.eval.probe`: the linear-probe protocol (extract, sweep, choose on val, report test once) and the
  scoring of saved probes at the original resolution;
- :mod:`dense.eval.zeroshot`: zero-shot classification and the pointing game.

``data`` is opened by :func:`dense.eval.data.open_data` (one way for every evaluator and for extraction); settings
are the frozen config objects of :mod:`dense.eval.settings`, whose :func:`~dense.eval.settings.figure_name` makes
every flat figure name. Evaluators print nothing. ``dense eval ...`` and
``dense probe ...`` (:mod:`dense.cli`) map their flags to one such call and turn its Result into a table and a JSON
file (``--json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    """What an evaluator measured.

    Attributes:
        figures: flat named figures, e.g. ``{"mIoU": 0.41, "IoU/red circle": 0.52}``; evaluators that compare
            settings prefix the setting: ``{"map-value-mlp/mIoU": ...}``.
        rows: one dict per sample (an image, or an expression), for inspection and bootstrap intervals.
        meta: what was evaluated (dataset, split, encoder fingerprint, settings, counts, seconds).
        intervals: bootstrap 95% intervals ``[lo, hi]`` of figures, under the figure's name
            (:mod:`dense.eval.stats`); figures without one are absent.
        artifacts: what the run made besides figures, by name (e.g. ``"probe"``: the chosen
            :class:`probes.LinearProbe`; ``"chosen"``: a chosen setting object); not part of :meth:`to_json`.
        values: the figures as structured values, ``{setting object: {figure: value}}`` (an
            :class:`~dense.eval.settings.OpenVocabSetting`, a :class:`~dense.eval.settings.Way`, a
            :class:`probes.train.Head`), where the evaluator compares settings; ``figures`` holds their flat names
            (:func:`dense.eval.settings.figure_name`). Not part of :meth:`to_json`.
    """

    figures: dict[str, float]
    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict, repr=False)
    values: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {"figures": self.figures, "intervals": {k: list(v) for k, v in self.intervals.items()},
                "meta": self.meta, "rows": self.rows}


def update_calibration(path: str | Path, entries: dict) -> Path:
    """Merge ``entries`` into the ``dense_calibration.json`` at ``path`` (created if missing; its other keys are
    kept, ``measured`` is merged per key) and write it atomically. The result must be a valid calibration
    (:class:`dense.checkpoint.Calibration`): nothing is written otherwise."""
    from dense._atomic import write_json
    from dense.checkpoint import Calibration, load_json

    path = Path(path)
    data = load_json(path) if path.exists() else {}
    measured = {**data.get("measured", {}), **entries.get("measured", {})}
    data.update({k: v for k, v in entries.items() if k != "measured"})
    if measured:
        data["measured"] = measured
    Calibration.from_dict(data, str(path))
    return write_json(path, data, indent=2)
