"""Probe protocols from the papers: sweep settings (what to extract, which layer sets and pooled variants to sweep)
and named presets that fix everything else a published table fixed (resolution, token budget, head, evaluation
windows, label handling), with the table's figure.

    >>> p = protocol("best-block", num_layers=27)
    >>> cache = FeatureCache.for_encoder(root, enc, layers=p.layers, pooled=p.pooled_needed)
    >>> train_probes(train, val, names, ProbeConfig(layer_sets=p.layer_sets, pooled=p.pooled))

- ``last``: the last block's tokens (dense's default).
- ``last-k``: the last ``k`` blocks concatenated (DINOv2's linear evaluation uses the last 4).
- ``best-block``: one head per single block, the best chosen on val (the Perception Encoder paper's protocol: for
  SigLIP2-So400m, ADE20K 44.0 mIoU at block 24 of 27 vs 42.9 at the last).
- ``pooled``: the last block with the image's pooled MAP embedding concatenated to every token (TIPS; the protocol
  of the SigLIP 2 paper's probe figures, So/14 at 384: VOC 78.1, ADE20K 45.4).
- ``all``: every one of the above in one sweep, chosen on val.

All are heads of one sweep (keyed by learning rate, layer set and ``+pooled``), so one pass over the features trains
them together.

Presets (:data:`PRESETS`, :func:`preset`)
-----------------------------------------
A :class:`Preset` is data: one published protocol, with what it fixes and the figure its paper reports.
``preset("dinov3").settings(patch_size=14, num_layers=27)`` gives the concrete settings for a checkpoint (the token
budget follows from the preset's resolution and the checkpoint's patch size: 512 px at patch 14 is 36 x 36 = 1,296
tokens, at patch 16 32 x 32 = 1,024); ``describe()`` says, one line per choice, what the preset fixes.

The head. :class:`probes.LinearProbe` is BatchNorm + 1x1 convolution; :mod:`probes.train` sets the BN statistics
to the exact per-channel mean and variance of the training tokens and freezes them (the affine weights train), and
saves a ``BatchNorm2d`` in eval mode. At evaluation that IS an eval-mode BN, the same function as the BN heads of
mmsegmentation / DINOv3 / RADIO, whose running statistics are averages of batch statistics; only training differs
(their BN normalizes each batch by its own statistics). With frozen statistics BN + linear is itself an affine map
of the tokens, so the "linear" presets train the same head (per-channel standardization only conditions the
optimizer). No separate BN head is needed.

Label handling. dense's readers already map stored values to labels as these protocols do (:mod:`dense.segdata`):
ADE20K reduce-zero-label (0 "other" -> ignore, k -> k - 1: 150 classes), VOC's 255 boundaries -> ignore (21
classes with background). :data:`LABELS` says so per dataset; a preset adds nothing to it.

What dense does not reproduce. Geometry: the papers give square resolutions (``siglip2-tips``: 384 px, and the
fixed-resolution checkpoint's own processor resizes every image to 384 x 384; ``pe-best-block``: 448 px; ``dinov3``
and ``radio``: square 512 px training crops, RADIO's padded to 518); dense keeps each image's aspect ratio within the
same token count (a 512 x 683 image at ``siglip2-tips``: 23 x 31 = 713 tokens, not 27 x 27 = 729); ``dinov3``'s
evaluation windows are square, as the paper's. Training: dense trains on cached whole-image features at the budget's
token count, not on random square crops with scale and flip augmentation (mmsegmentation's pipelines); nor the
papers' schedules (dense sweeps learning rates and chooses on a held-out 10 % of the training split). These are the
remaining differences to a published figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dense.errors import InputError
from dense.tiling import SLIDE_RULES

NAMES = ("last", "last-k", "best-block", "pooled", "all")


@dataclass(frozen=True)
class Protocol:
    layers: tuple[int, ...]  # blocks to extract (absolute indices)
    layer_sets: tuple[tuple[int, ...], ...]  # ProbeConfig.layer_sets
    pooled: tuple[bool, ...]  # ProbeConfig.pooled

    @property
    def pooled_needed(self) -> bool:
        """Must the cache hold the pooled embedding (``FeatureCache.for_encoder(..., pooled=True)``)?"""
        return any(self.pooled)


def last_k(k: int, num_layers: int) -> tuple[int, ...]:
    """The last ``k`` blocks, oldest first: ``last_k(4, 27) == (23, 24, 25, 26)``."""
    if not 1 <= k <= num_layers:
        raise InputError(f"k={k} must be in [1, {num_layers}]")
    return tuple(range(num_layers - k, num_layers))


def protocol(name: str, *, num_layers: int, k: int = 4, layers: tuple[int, ...] | None = None) -> Protocol:
    """The extraction layers and sweep settings of protocol ``name`` (see :data:`NAMES`) for a ``num_layers`` deep
    encoder. ``k``: blocks of ``last-k``; ``layers``: the candidate blocks of ``best-block`` (default: all)."""
    last = num_layers - 1
    k = min(k, num_layers)
    single = tuple((b,) for b in (layers if layers is not None else range(num_layers)))
    if name == "last":
        return Protocol((last,), ((last,),), (False,))
    if name == "last-k":
        return Protocol(last_k(k, num_layers), (last_k(k, num_layers),), (False,))
    if name == "best-block":
        return Protocol(tuple(sorted({b for (b,) in single})), single, (False,))
    if name == "pooled":
        return Protocol((last,), ((last,),), (True,))
    if name == "all":
        sets = tuple(dict.fromkeys([(last,), last_k(k, num_layers), *single]))
        layers = tuple(sorted({b for s in sets for b in s}))
        return Protocol(layers, sets, (False, True))
    raise InputError(f"unknown protocol {name!r}; choose one of {NAMES}")


# ---------------------------------------------------------------------------------------------------------------------
# Presets of the published tables

LABELS = {
    "ade20k": "ADE20K reduce-zero-label: 0 ('other') -> ignore, k -> k - 1, 150 classes (dense.segdata.ade20k)",
    "voc": "VOC 2012: 255 (object boundaries) -> ignore, 21 classes with background (dense.segdata.voc)",
}
HEADS = ("linear", "bn-linear")  # what the paper trains; dense trains probes.LinearProbe for both (module docstring)
EVALUATIONS = ("whole", "slide")  # one pass over the whole image at the budget; sliding square windows


@dataclass(frozen=True)
class Reference:
    """A published figure: ``miou`` (percent) on ``dataset`` (a :mod:`dense.segdata` name) for ``model``."""

    dataset: str
    miou: float
    model: str
    source: str
    note: str = ""


@dataclass(frozen=True)
class Preset:
    """One published probe protocol. See the module docstring; :meth:`describe` for what it fixes."""

    name: str
    title: str
    source: str  # the paper, and where its protocol is written down
    layers: str  # ('last', 'best-block'): a protocol of :func:`protocol`
    pooled: bool  # the pooled MAP embedding concatenated to every token (TIPS)
    resolution_px: int  # the side of the square the paper crops or resizes to: the token budget (grid_side ** 2)
    head: str  # ('linear', 'bn-linear')
    evaluation: str  # ('whole', 'slide')
    stride_px: int | None = None  # 'slide': pixels between window starts (windows of resolution_px, short side too)
    slide_rule: str = "mmseg"  # ('mmseg', 'dinov3'): whose slide_inference places the windows (dense.tiling)
    pad_to_patch: bool = False  # the crop is zero-padded up to a multiple of the patch size (RADIO: 512 -> 518 at 14)
    references: tuple[Reference, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.layers not in ("last", "best-block"):
            raise InputError(f"preset {self.name}: layers {self.layers!r} must be 'last' or 'best-block'")
        if self.head not in HEADS:
            raise InputError(f"preset {self.name}: head {self.head!r} must be one of {HEADS}")
        if self.evaluation not in EVALUATIONS:
            raise InputError(f"preset {self.name}: evaluation {self.evaluation!r} must be one of {EVALUATIONS}")
        if (self.evaluation == "slide") != (self.stride_px is not None):
            raise InputError(f"preset {self.name}: stride_px goes with evaluation='slide' and only with it")
        if self.slide_rule not in SLIDE_RULES:
            raise InputError(f"preset {self.name}: slide_rule {self.slide_rule!r} must be one of {SLIDE_RULES}")

    def grid_side(self, patch_size: int) -> int:
        """Patches per side of the preset's square: ``resolution_px // patch_size`` (the patch convolution drops the
        remainder: 384 px at patch 14 is 27 with 6 px unused, 512 px is 36 with 8 px unused), or with
        ``pad_to_patch`` ``ceil(resolution_px / patch_size)`` (RADIO pads its 512 px crops with zeros to 518 px, 37
        patches of 14)."""
        if patch_size < 1 or patch_size > self.resolution_px:
            raise InputError(f"patch size {patch_size} for preset {self.name} at {self.resolution_px} px")
        return -(-self.resolution_px // patch_size) if self.pad_to_patch else self.resolution_px // patch_size

    def max_patches(self, patch_size: int) -> int:
        """The token budget at the preset's resolution: ``grid_side ** 2`` (dense keeps each image's aspect ratio
        within it)."""
        return self.grid_side(patch_size) ** 2

    def protocol(self, num_layers: int) -> Protocol:
        """The extraction layers and sweep settings (:class:`Protocol`)."""
        proto = protocol(self.layers, num_layers=num_layers)
        return Protocol(proto.layers, proto.layer_sets, (self.pooled,))

    def slide(self) -> dict | None:
        """Keywords of :func:`dense.tiling.predict_slide` (None for whole-image evaluation)."""
        if self.evaluation != "slide":
            return None
        return {"window_px": self.resolution_px, "stride_px": self.stride_px, "short_side_px": self.resolution_px,
                "rule": self.slide_rule}

    def settings(self, *, patch_size: int, num_layers: int) -> dict:
        """Everything the preset fixes, concrete for a checkpoint of ``patch_size`` and ``num_layers`` blocks."""
        proto = self.protocol(num_layers)
        return {"preset": self.name, "max_patches": self.max_patches(patch_size),
                "grid": (self.grid_side(patch_size),) * 2, "layers": proto.layers, "layer_sets": proto.layer_sets,
                "pooled": proto.pooled, "head": self.head, "evaluation": self.evaluation, "slide": self.slide(),
                "labels": dict(LABELS)}

    def reference(self, dataset: str) -> Reference | None:
        """The published figure on ``dataset`` (None when the paper gives none for So400m)."""
        return next((r for r in self.references if r.dataset == dataset), None)

    def describe(self, *, patch_size: int | None = None, num_layers: int | None = None) -> list[str]:
        """One line per choice the preset fixes (concrete when ``patch_size`` / ``num_layers`` are given), then its
        reference figures: what ``dense eval probe --preset NAME`` prints."""
        side = f"{self.resolution_px} px" + (" crops zero-padded to a multiple of the patch size" if self.pad_to_patch
                                             else "")
        if patch_size:
            g = self.grid_side(patch_size)
            side += (f": {g} x {g} = {g * g:,} tokens at patch {patch_size} (dense keeps each image's aspect ratio "
                     f"within them; the paper's resolution is a square)")
        else:
            side += " (token budget (resolution // patch) ** 2)"
        if self.layers == "last":
            blocks = "the last block" + (f" (block {num_layers - 1}, 0-based)" if num_layers else "")
        else:
            blocks = "the best single block, one head per block, chosen on the held-out split"
        head = {"linear": "linear (dense trains BN + linear with frozen token statistics: the same affine map)",
                "bn-linear": "BN + linear (probes.LinearProbe: eval-mode BN at the training tokens' statistics)"}
        if self.evaluation == "slide":
            evaluation = (f"sliding windows: short side resized to {self.resolution_px} px, {self.resolution_px} px "
                          f"square windows every {self.stride_px} px, logits averaged over overlaps, placed as "
                          f"{self.slide_rule}'s slide_inference places them (dense.tiling.predict_slide)")
        else:
            evaluation = "whole image at the token budget, logits upsampled bilinearly to the original size"
        lines = [f"preset {self.name}: {self.title}",
                 f"  source:     {self.source}",
                 f"  layers:     {blocks}",
                 f"  pooled:     {'the pooled MAP embedding concatenated to every token' if self.pooled else 'no'}",
                 f"  resolution: {side}",
                 f"  head:       {head[self.head]}",
                 f"  evaluation: {evaluation}",
                 *(f"  labels:     {v}" for v in LABELS.values())]
        lines += [f"  note:       {n}" for n in self.notes]
        if not self.references:
            lines.append("  reference:  none published for SigLIP 2 So400m under this protocol")
        for r in self.references:
            lines.append(f"  reference:  {r.dataset} mIoU {r.miou} ({r.model}; {r.source}"
                         f"{'; ' + r.note if r.note else ''})")
        return lines


SIGLIP2_PAPER = "Tschannen et al. 2025, SigLIP 2 (arXiv 2502.14786), the dense-probing table"
PE_PAPER = "Bolya et al. 2025, Perception Encoder (arXiv 2504.13181), layer-wise frozen-feature probes"
RADIO_PAPER = "Ranzinger et al. 2024, AM-RADIO (CVPR 2024, arXiv 2312.06709), the linear-segmentation comparison"

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("siglip2-tips", "the SigLIP 2 paper's probe (TIPS protocol): last block + pooled embedding, 384 px",
           f"{SIGLIP2_PAPER}, which follows TIPS (Maninis et al. 2025)",
           layers="last", pooled=True, resolution_px=384, head="linear", evaluation="whole",
           references=(Reference("voc", 78.1, "SigLIP 2 So/14 at 384", SIGLIP2_PAPER),
                       Reference("ade20k", 45.4, "SigLIP 2 So/14 at 384", SIGLIP2_PAPER))),
    Preset("pe-best-block", "the Perception Encoder paper's probe: the best single block, 448 px",
           PE_PAPER, layers="best-block", pooled=False, resolution_px=448, head="linear", evaluation="whole",
           references=(Reference("ade20k", 44.0, "SigLIP 2 So400m", PE_PAPER,
                                 "block 24 of 27 as the paper counts; the last block gives 42.9"),)),
    Preset("dinov3", "DINOv3's linear probe: BN + linear on the last block, 512 px, sliding windows (stride 341)",
           "Simeoni et al. 2025, DINOv3 (arXiv 2508.10104); the protocol as facebookresearch/dinov3 "
           "dinov3/eval/segmentation/configs/config-ade20k-linear-training.yaml writes it (use_batchnorm, "
           "backbone_out_layers LAST, img_size 512, eval mode slide, crop 512, stride 341, reduce_zero_label)",
           layers="last", pooled=False, resolution_px=512, head="bn-linear", evaluation="slide", stride_px=341,
           slide_rule="dinov3"),
    Preset("radio", "RADIO's linear probe: BN head on the last block, 512 px crops padded to 518 px",
           f"{RADIO_PAPER}; the protocol as NVlabs/RADIO mmseg/configs/radio/radio_linear_8xb2-80k_ade20k-512x512.py "
           "writes it (BNHead; training: its _base_ ADE20K config's 512 x 512 random crops, zero-padded to 518 x 518 "
           "by its SegDataPreProcessor (size=(518, 518), pad_val=0, labels padded with 255); test: the whole image, "
           "short side 512, padded to a multiple of 14)",
           layers="last", pooled=False, resolution_px=512, pad_to_patch=True, head="bn-linear", evaluation="whole",
           references=(Reference("ade20k", 40.53, "SigLIP So400m v1 (google/siglip-so400m-patch14-384)", RADIO_PAPER),
                       Reference("voc", 70.31, "SigLIP So400m v1 (google/siglip-so400m-patch14-384)", RADIO_PAPER)),
           notes=("RADIO trains on 512 x 512 crops zero-padded to 518 x 518 (37 x 37 patches at 14, about 36.6 of "
                  "them image); dense trains on whole images at 37 x 37 = 1,369 tokens' budget, every token image",
                  "RADIO tests the whole image resized to short side 512 and padded to a multiple of 14 (a "
                  "683 x 512 image: 49 x 37 = 1,813 tokens); dense holds it to the same 1,369-token budget",
                  "its reference figures are SigLIP v1's: reproduce them with --model google/siglip-so400m-patch14-384",
                  )),
)}


def preset(name: str) -> Preset:
    """The preset ``name`` (a key of :data:`PRESETS`); an unknown name raises naming the choices."""
    if name not in PRESETS:
        raise InputError(f"unknown --preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
