"""The settings of an evaluation as small frozen values, and the one place flat figure names are made.

Config objects (what a run does; presets and calibrations construct them, the CLI builds them from flags):

- :class:`Extraction`: how features are made and kept (token budget, blocks, batch, cache dtype, resume, bad input);
- :class:`ProbeTraining`: the probe sweep (learning rates, layer sets, pooled heads, epochs, ...);
- :class:`ProbeSplits`: which split trains, chooses and reports (or a seeded holdout);
- :class:`Sharpening`: how a probe's predictions reach the image's pixels;
- :class:`OpenVocabScoring`, :class:`ReferScoring`: what the open-vocabulary / referring evaluators score;
- :class:`Bootstrap`: the intervals' draws.

A field left ``None`` is UNSET: the checkpoint's calibration, a preset or a protocol fills it, and a preset refuses
only what the user set (``Extraction(layers=(-1,))`` clashes with a preset even though it is the default).

Settings of results (what a figure was measured with): :class:`OpenVocabSetting` (method, refinement, windows,
background, templates) and :class:`Way` (candidates, method, scorer, box threshold). Each prints whole (``str``), and
its flat name for JSON and tables comes from :func:`figure_name`, the only place such names are made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from dense.errors import InputError
from probes.train import LRS  # the default learning-rate grid, written once

POOLED = {"off": (False,), "on": (True,), "both": (False, True)}  # heads without / with the pooled embedding (TIPS)
STORE_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}
ON_ERROR = ("raise", "skip")


def _at_least(name: str, v, low: int = 1) -> None:
    if v is not None and int(v) < low:
        raise InputError(f"{name} must be at least {low}, got {v}")


def _fraction(name: str, v, *, open_: bool = False) -> None:
    if v is None:
        return
    if not (0 < v < 1 if open_ else 0.0 <= v <= 1.0):
        raise InputError(f"{name} must be a fraction in {'(0, 1)' if open_ else '[0, 1]'}, got {v}")


@dataclass(frozen=True)
class Extraction:
    """How features are made and kept.

    ``max_patches``: token budget (None: the checkpoint's); ``layers``: the blocks extracted (None: unset, the last
    block unless a protocol or preset sets them); ``batch_size``: images per extraction pass; ``store_dtype``: tokens
    in the cache (``float32``, ``bfloat16``; ``fp32``, ``bf16``); ``extract=False`` requires every feature in the
    cache; ``on_error="skip"`` drops unreadable images and bad annotations (listed in the Result)."""

    max_patches: int | None = None
    layers: tuple[int, ...] | None = None
    batch_size: int = 8
    store_dtype: str = "float32"
    extract: bool = True
    on_error: str = "raise"  # ('raise', 'skip')

    def __post_init__(self):
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(b) for b in self.layers))
        from dense.preprocess import check_max_patches

        check_max_patches(self.max_patches)
        _at_least("batch_size", self.batch_size)
        if self.store_dtype not in STORE_DTYPES:
            raise InputError(f"store_dtype must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype!r}")
        if self.on_error not in ON_ERROR:
            raise InputError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")

    @property
    def blocks(self) -> tuple[int, ...]:
        """The blocks to extract: ``layers``, or the last block when unset."""
        return self.layers if self.layers is not None else (-1,)


@dataclass(frozen=True)
class ProbeTraining:
    """The probe sweep: one head per learning rate of ``lrs`` x layer set of ``layer_sets`` (None: all extracted
    blocks together) x ``pooled`` (``off``, ``on``, ``both``; None: unset, ``off``). ``protocol``
    (:mod:`probes.protocols`: ``last``, ``last-k`` with ``last_k`` blocks, ``best-block``, ``pooled``, ``all``) sets
    the layers, layer sets and pooled heads instead. ``train_batch_size``: images per step; ``feature_dtype``: the
    in-memory training tokens."""

    lrs: tuple[float, ...] = LRS
    epochs: int = 10
    train_batch_size: int = 16
    label_scale: int = 1
    weight_decay: float = 0.0
    feature_dtype: str = "float32"
    seed: int = 0
    layer_sets: tuple[tuple[int, ...], ...] | None = None
    pooled: str | None = None  # ('off', 'on', 'both'); None: unset
    protocol: str | None = None  # ('last', 'last-k', 'best-block', 'pooled', 'all')
    last_k: int = 4

    def __post_init__(self):
        object.__setattr__(self, "lrs", tuple(float(v) for v in self.lrs))
        if self.layer_sets is not None:
            object.__setattr__(self, "layer_sets", tuple(tuple(int(b) for b in s) for s in self.layer_sets))
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise InputError(f"lrs must be positive learning rates, got {list(self.lrs)}")
        for name in ("epochs", "train_batch_size", "label_scale", "last_k"):
            _at_least(name, getattr(self, name))
        if self.pooled is not None and self.pooled not in POOLED:
            raise InputError(f"pooled must be one of {', '.join(POOLED)}, got {self.pooled!r}")
        if self.feature_dtype not in STORE_DTYPES:
            raise InputError(f"feature_dtype must be one of {', '.join(STORE_DTYPES)}, got {self.feature_dtype!r}")
        if self.protocol is not None:
            from probes.protocols import NAMES

            if self.protocol not in NAMES:
                raise InputError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(NAMES)}")


@dataclass(frozen=True)
class ProbeSplits:
    """Heads train on ``train`` (None: ``"train"``, or a named dataset's training split of
    :data:`dense.segdata.PROTOCOLS`) and are chosen on ``val``; with ``holdout`` (a fraction) they train on the rest
    of ``train`` (split ``fit``) and are chosen on a seeded ``holdout`` of it (``holdout_seed``). ``test`` (None:
    none) is scored once with the chosen head and must differ from both."""

    train: str | None = None
    val: str = "val"
    test: str | None = None
    holdout: float | None = None
    holdout_seed: int = 0

    def __post_init__(self):
        _fraction("holdout", self.holdout, open_=True)


@dataclass(frozen=True)
class Sharpening:
    """How a probe's predictions reach the image's pixels: ``sharpen`` (``bilinear``, ``guided``; None: unset,
    bilinear) or a learned ``upsampler`` (a :class:`dense.upsample.Upsampler` or its file)."""

    sharpen: str | None = None
    upsampler: object = None

    def __post_init__(self):
        from dense.upsample import SHARPEN_MODES  # how predictions reach the image's pixels

        if self.sharpen is not None and self.sharpen not in SHARPEN_MODES:
            raise InputError(f"sharpen must be one of {', '.join(SHARPEN_MODES)}, got {self.sharpen!r}")

    @property
    def mode(self) -> str:
        return self.sharpen or "bilinear"

    @property
    def is_set(self) -> bool:
        return self.sharpen is not None or self.upsampler is not None


@dataclass(frozen=True)
class Bootstrap:
    """Percentile-bootstrap intervals: ``resamples`` draws, ``seed`` (:mod:`dense.eval.stats`)."""

    resamples: int = 1000
    seed: int = 0

    def __post_init__(self):
        _at_least("resamples", self.resamples)

    def kwargs(self) -> dict:
        return {"resamples": self.resamples, "seed": self.seed}


@dataclass(frozen=True)
class OpenVocabScoring:
    """What :func:`dense.eval.openvocab.evaluate_openvocab` scores: each of ``methods`` with each of ``refines``,
    at ``windows``, ``background`` (a threshold in [0, 1], or background prompts) and ``templates``; None for any:
    the checkpoint's calibration (:meth:`resolve`), so a run with no settings reproduces what it measured.
    ``thresholds``: background thresholds scored as well, to choose one."""

    methods: tuple[str, ...] | None = None
    refines: tuple[str, ...] | None = None
    windows: int | None = None
    background: float | tuple[str, ...] | None = None
    templates: tuple[str, ...] | None = None
    thresholds: tuple[float, ...] = ()

    def __post_init__(self):
        for name in ("methods", "refines", "templates"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        if isinstance(self.background, (list, tuple)):
            object.__setattr__(self, "background", tuple(self.background))
        elif self.background is not None:
            _fraction("background threshold", self.background)
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if any(not 0.0 <= t <= 1.0 for t in self.thresholds):
            raise InputError(f"swept background thresholds must be in [0, 1], got {list(self.thresholds)}")
        _at_least("windows", self.windows)

    def settings(self, background) -> list[OpenVocabSetting]:
        """Every (method, refinement) of a resolved config, at ``background`` (the run's), in table order."""
        return [OpenVocabSetting(m, r, self.windows, background, self.templates)
                for m in self.methods for r in self.refines]


@dataclass(frozen=True)
class ReferScoring:
    """What :func:`dense.eval.refer.evaluate_refer` scores: each of ``methods`` (None: the calibrated one), the
    component box at ``box_threshold`` (None: the calibration's), each of ``thresholds`` (a sweep of box thresholds,
    to choose one), candidate boxes ranked by each of ``scorers``, with ``templates`` (None: the calibration's)."""

    methods: tuple[str, ...] | None = None
    scorers: tuple[str, ...] = ("map-box", "heatmap-mean")
    box_threshold: float | None = None
    thresholds: tuple[float, ...] | None = None  # None: dense.refer.BOX_THRESHOLDS
    templates: tuple[str, ...] | None = None

    def __post_init__(self):
        for name in ("methods", "scorers", "templates"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        if self.thresholds is not None:
            object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        _fraction("box_threshold", self.box_threshold)
        if any(not 0.0 <= t <= 1.0 for t in self.thresholds or ()):
            raise InputError(f"box thresholds must be in [0, 1], got {list(self.thresholds)}")
        from dense.refer import SCORERS

        for s in self.scorers:
            if s not in SCORERS:
                raise InputError(f"unknown candidate scorer {s!r}; choose from {', '.join(SCORERS)}")


# ---------------------------------------------------------------------------------------------------------------------
# Settings of results, and their flat names


def figure_name(prefix: str, figure: str, threshold: float | None = None) -> str:
    """The flat name of ``figure`` measured with the setting named ``prefix``: ``prefix/figure`` (no prefix:
    ``figure``), and ``@thr=<t>`` for a swept threshold ``t``. The one place flat names are made."""
    name = f"{prefix}/{figure}" if prefix else figure
    return name if threshold is None else f"{name}@thr={threshold}"


@dataclass(frozen=True)
class OpenVocabSetting:
    """One open-vocabulary segmentation setting: a figure is measured with all of it."""

    method: str
    refine: str = "none"
    windows: int = 1
    background: float | tuple[str, ...] | None = None
    templates: tuple[str, ...] = field(default=())

    @property
    def prefix(self) -> str:
        """The figure prefix of its (method, refinement): ``map-value-mlp``, ``map-value-mlp+pamr`` (the run's
        windows and templates are one per run, the background a figure's ``@thr=`` suffix)."""
        return self.method if self.refine in (None, "none") else f"{self.method}+{self.refine}"

    def name(self, figure: str, *, swept: bool = False) -> str:
        """The flat name of ``figure`` at this setting (``swept``: its background is one of the run's sweep)."""
        return figure_name(self.prefix, figure, self.background if swept else None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["templates"] = list(self.templates)
        if isinstance(self.background, tuple):
            d["background"] = list(self.background)
        return d

    def __str__(self) -> str:
        bg = f"background prompts {list(self.background)}" if isinstance(self.background, tuple) \
            else f"background {self.background}"
        return (f"method {self.method}, refine {self.refine}, windows {self.windows}, {bg}, "
                f"templates {list(self.templates)}")


@dataclass(frozen=True)
class Way:
    """One way of localizing a referring expression: ``candidates`` (``none``, ``gt-boxes``), the heatmap ``method``
    (``-`` for none), the candidate ``scorer`` (``-`` for none) and, for a swept component box, its ``threshold``."""

    candidates: str
    method: str
    scorer: str = "-"
    threshold: float | None = None

    @property
    def prefix(self) -> str:
        """``none/map-value-mlp/-``, ``gt-boxes/map-value-mlp/map-box`` (a swept threshold is the figure's
        ``@thr=`` suffix)."""
        return f"{self.candidates}/{self.method}/{self.scorer}"

    def name(self, figure: str) -> str:
        return figure_name(self.prefix, figure, self.threshold)

    @property
    def key(self) -> str:
        """The way's flat name in rows: its prefix, with ``@thr=<t>`` for a swept threshold."""
        return figure_name("", self.prefix, self.threshold)

    def __str__(self) -> str:
        thr = "" if self.threshold is None else f", box threshold {self.threshold}"
        return f"candidates {self.candidates}, method {self.method}, scorer {self.scorer}{thr}"


def grid_edge(value: float, grid: Sequence[float]) -> str | None:
    """``"lowest"`` / ``"highest"`` when ``value`` is at that edge of a grid of at least two values, else None: the
    best may lie beyond it."""
    grid = sorted(set(grid))
    if len(grid) < 2 or value not in grid:
        return None
    return "lowest" if value == grid[0] else "highest" if value == grid[-1] else None


__all__ = ["Extraction", "ProbeTraining", "ProbeSplits", "Sharpening", "Bootstrap", "OpenVocabScoring",
           "ReferScoring", "OpenVocabSetting", "Way", "figure_name", "grid_edge", "LRS", "POOLED", "STORE_DTYPES"]
