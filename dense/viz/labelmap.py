"""Label maps: a colour per class (colour words in the names are honoured), classes painted over a light grey copy of
the image, and the label-map figure with its legend."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from dense.errors import InputError
from dense.labels import IGNORE, as_numpy
from dense.preprocess import load_image
from dense.viz.layout import FONT_PT, LUMA, check_at_image_size, panel_grid, panel_title

# Colour words a class name may contain, and how to draw them (tab10 shades where matplotlib has one: softer than pure
# RGB, and distinct from each other).
_COLOUR_WORDS: dict[str, tuple[float, float, float]] = {
    "red": (0.84, 0.15, 0.16), "green": (0.17, 0.63, 0.17), "blue": (0.12, 0.40, 0.85),
    "yellow": (0.95, 0.82, 0.10), "orange": (1.00, 0.50, 0.05), "purple": (0.58, 0.40, 0.74),
    "violet": (0.58, 0.40, 0.74), "pink": (0.97, 0.51, 0.75), "brown": (0.55, 0.34, 0.29),
    "grey": (0.50, 0.50, 0.50), "gray": (0.50, 0.50, 0.50), "black": (0.10, 0.10, 0.10),
    "white": (0.97, 0.97, 0.97), "cyan": (0.09, 0.75, 0.81), "magenta": (0.85, 0.10, 0.75),
    "gold": (0.85, 0.65, 0.13), "olive": (0.50, 0.50, 0.10), "teal": (0.0, 0.50, 0.50),
    "navy": (0.0, 0.0, 0.50), "silver": (0.75, 0.75, 0.75), "beige": (0.90, 0.85, 0.70),
}
SHADE_LIGHTNESS = (0.22, 0.82)  # classes sharing a colour word spread evenly over this HLS lightness range


def _shades(rgb, n: int) -> list[np.ndarray]:
    """``n`` shades of one colour, as far apart in lightness as ``SHADE_LIGHTNESS`` allows (hue and saturation kept);
    the one nearest the colour itself first, so a lone class keeps its plain colour."""
    import colorsys

    if n == 1:
        return [np.asarray(rgb, np.float64)]
    h, light, sat = colorsys.rgb_to_hls(*rgb)
    levels = np.linspace(*SHADE_LIGHTNESS, n)
    order = np.argsort(np.abs(levels - light), kind="stable")
    return [np.array(colorsys.hls_to_rgb(h, float(levels[k]), sat)) for k in order]


def _colour_word(name: str) -> str | None:
    return next((w for w in re.findall(r"[a-z]+", str(name).lower()) if w in _COLOUR_WORDS), None)


def class_colours(class_names: Sequence[str]) -> np.ndarray:
    """``[K, 3]`` RGB in [0, 1], one per class: the colour a name mentions ("green triangle" -> green), otherwise a
    distinct tab20 colour not already used. Classes that share a colour word (red circle, red square, red star) get
    shades of it spread evenly in lightness (:data:`SHADE_LIGHTNESS`): four reds stay at least 0.3 apart in RGB."""
    from matplotlib import colormaps

    colours: list[np.ndarray | None] = [None] * len(class_names)
    words = [_colour_word(n) for n in class_names]
    shades = {w: _shades(_COLOUR_WORDS[w], words.count(w)) for w in set(words) - {None}}
    for k, word in enumerate(words):
        if word is not None:
            colours[k] = shades[word].pop(0)
    tab = colormaps["tab20"]
    spare = [np.array(tab(i)[:3]) for i in (*range(0, 20, 2), *range(1, 20, 2))]
    for k in range(len(class_names)):
        if colours[k] is not None:
            continue
        used = [c for c in colours if c is not None]
        far = [c for c in spare if all(np.abs(c - u).sum() > 0.25 for u in used)]
        colours[k] = (far or spare)[0]
        spare = [c for c in spare if c is not colours[k]] or spare
    return np.array(colours, np.float64).reshape(-1, 3)


PAINT_BASE = (0.35, 0.95)  # label maps: the image's luminance 0..1 drawn in this (light) grey range
IGNORE_RGB = (0.25, 0.25, 0.25)  # the dark stripes over ignore / crowd pixels


def _painted(colours: np.ndarray, alpha: float) -> np.ndarray:
    """The colour a class shows with, over the middle of the grey base: its legend swatch."""
    return alpha * np.asarray(colours, np.float64) + (1 - alpha) * float(np.mean(PAINT_BASE))


def _paint(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float,
           ignore: np.ndarray | None = None) -> np.ndarray:
    """Classes painted in their colours over a light grey copy of the image; background (0) stays grey; ``ignore``
    (bool ``[H, W]``) gets dark diagonal stripes."""
    lo, hi = PAINT_BASE
    grey = (image.astype(np.float64) @ LUMA / 255.0)[..., None]  # [H, W, 3] -> [H, W, 1]
    base = lo + (hi - lo) * np.repeat(grey, 3, axis=2)  # lightened, so painted colours stand out
    painted = (labels > 0) & (labels <= len(colours))
    rgb = colours[np.clip(labels - 1, 0, len(colours) - 1)]  # [H, W] -> [H, W, 3]
    out = np.where(painted[..., None], (1 - alpha) * base + alpha * rgb, base)
    if ignore is not None and ignore.any():
        H, W = labels.shape
        period = max(4, round(min(H, W) / 16))  # a few stripes across even a small region
        yy, xx = np.mgrid[:H, :W]
        stripe = ((xx + yy) // max(1, period // 2)) % 2 == 0  # [H, W]
        out = np.where((ignore & stripe)[..., None], np.asarray(IGNORE_RGB), out)
    return out


def paint_labels(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, *,
                 alpha: float = 0.85) -> np.ndarray:
    """uint8 ``[H, W, 3]``: ``labels [H, W]`` (0 background, ``k + 1`` class ``k``) painted in ``colours`` over a light
    grey copy of ``image``, as :func:`label_map` draws them; background stays the grey image."""
    return (_paint(image, labels, colours, alpha) * 255 + 0.5).clip(0, 255).astype(np.uint8)


def label_swatches(colours: np.ndarray, *, alpha: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    """The legend colours of :func:`paint_labels`, RGB in [0, 1]: ``(classes [K, 3], background [3])``, each as
    painted over the middle of the grey base."""
    return _painted(colours, alpha), np.full(3, float(np.mean(PAINT_BASE)))


def label_map(image, labels, class_names: Sequence[str], *, gt=None, alpha: float = 0.85,
              background: str = "background", ignore_index: int = IGNORE, titles: Sequence[str] | None = None):
    """The image, the ground truth ``gt`` (when given), and ``labels [H, W]`` side by side.

    Label 0 is background (left unpainted: the image in grey), ``k + 1`` is ``class_names[k]``, ``ignore_index``
    (ignore / crowd regions, not scored) is striped dark grey. Colours follow colour words in the names
    (:func:`class_colours`); the legend lists the classes present in the maps shown, with the colour they are painted
    in, then background and ignore when present."""
    image = load_image(image)
    maps = [as_numpy(labels).astype(np.int64)]
    if gt is not None:
        maps.insert(0, as_numpy(gt).astype(np.int64))
    for m, what in zip(maps, ["ground truth", "label map"] if gt is not None else ["label map"], strict=True):
        check_at_image_size(image, m, what)
        valid = m[m != ignore_index]
        if valid.size and (valid.min() < 0 or valid.max() > len(class_names)):
            raise InputError(f"{what} values {valid.min()}..{valid.max()} outside 0..{len(class_names)}")
    if titles is None:
        titles = ["ground truth", "prediction"] if gt is not None else ["labels"]
    colours = class_colours(class_names)
    fig, axes, w = panel_grid(1 + len(maps), image.shape[:2], extra_w=2.4)
    axes[0].imshow(image)
    panel_title(axes[0], "image", w)
    for ax, m, t in zip(axes[1:], maps, titles, strict=True):
        ignored = m == ignore_index
        ax.imshow(_paint(image, np.where(ignored, 0, m), colours, alpha, ignore=ignored))
        panel_title(ax, t, w)
    from matplotlib.patches import Patch

    values = {int(v) for m in maps for v in np.unique(m)}
    swatches = _painted(colours, alpha)
    handles = [Patch(facecolor=swatches[k - 1], edgecolor="black", linewidth=0.5, label=class_names[k - 1])
               for k in sorted(values - {0, ignore_index})]
    if 0 in values:  # a neutral swatch: background is the image itself, in grey
        handles.append(Patch(facecolor=(np.mean(PAINT_BASE),) * 3, edgecolor="black", linewidth=0.5,
                             label=f"{background} (unpainted)"))
    if ignore_index in values:  # the same stripes as the map
        handles.append(Patch(facecolor=(np.mean(PAINT_BASE),) * 3, edgecolor=IGNORE_RGB, hatch="////",
                             linewidth=0.5, label="ignore / crowd (not scored)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=FONT_PT, frameon=False)
    return fig

