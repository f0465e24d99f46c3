"""Train ``shapes-tiny-v2`` (or, with ``--v1``, ``shapes-tiny``): a small ``transformers.SiglipModel`` on the synthetic
shapes world, on CPU.

    python scripts/train_shapes_siglip.py                         # v2 -> dense/checkpoints/shapes-tiny-v2
    python scripts/train_shapes_siglip.py --v1 --steps 1500 --out dense/checkpoints/shapes-tiny    # the v1 recipe
    python scripts/train_shapes_siglip.py --eval-only FOLDER      # held-out figures of a saved checkpoint
    python scripts/train_shapes_siglip.py --steps 2 --batch 8 --pool 16 --eval-images 16 --eval-pointing 1 \
        --eval-budgets 64 --out /tmp/tiny                         # a smoke run of every step

Recipe:
- Vision tower: hidden 128, ``--layers`` 2, patch 8, 64 px (an 8 x 8 grid). Text tower: hidden 128, 2 layers, a
  word-level tokenizer (lower-case, ``</s>`` appended, right-padded to 16 = ``max_position_embeddings``: SigLIP's text
  tower pools the LAST position; it returns ``input_ids`` only, like SigLIP's own tokenizers).
- Pre-generated image pools (drawn once, before the steps): half of each batch single-object images, half
  multi-object (2-3 objects). Each image gets one caption naming ONE of its objects ("red circle", "the red circle",
  "a photo of a red circle", sometimes with a true size/position word: "the small red circle", "... on the left").
- Sigmoid loss where every (image, caption) pair whose image contains the caption's category is positive, not just the
  diagonal. Captions naming one of several objects are what make patch tokens align with text (the map-value score);
  single-object images are what teach global shape recognition quickly.
- A name-separation loss (squared positive cosines between the 16 category names' embeddings; weight 10 for 300
  steps, then 1). Without it the text tower collapsed onto colour at once ("red circle" and "red square" at cosine
  1.00 after 1,500 steps, zero-shot 27% = colour only) and the image tower never got a gradient towards shape.
- v2 only, the per-patch loss (``--patch-weight``, 0 = v1): every patch token of every image goes through
  ``dense.heatmap``'s own ``map-value-mlp`` function (the MAP head's value projection, ``out_proj`` and MLP residual:
  exactly what dense scores by default) and EVERY caption of the batch scores it with the model's OWN
  ``logit_scale``/``logit_bias`` (no separate temperature, so sigmoid 0.5 stays the calibrated threshold); binary
  cross-entropy against the patch's coverage (0..1) by objects of the caption's category in that image (a
  non-referred object of the same class is a positive, every other object a negative), mean over (image, caption,
  patch). The same loss through ``clear-map-value-mlp`` (the last block re-run on its input with self-self attention;
  ``--clear-weight``, 0 = off) keeps the ``clear-*`` methods aligned too instead of leaving them to drift.
  A colleague's 800-step arm (referred object only, own temperature and bias, weight 10) measured: val mIoU
  .30/.42/.46 at 64/144/256 tokens, pointing .80/.84/.87, zero-shot .93, and a best background threshold of 0.1.
- AdamW, lr 1e-3 with warm-up and cosine decay, a fixed number of steps (reproducible; not a time budget).
- One thread by default: on the shared 2-core machine two threads ran 3-4x SLOWER per step than one (threads
  preempted at every barrier); ``--threads 2`` on a quiet machine.

Measured, v1 (seed 0, 1,500 steps, 1 thread, contended machine): 17.9 minutes; zero-shot 98.8%, retrieval R@1 0.93,
map-value pointing 0.56 (64 px) / 0.55 (native aspect). A 1-layer tower (``--layers 1``): 15.3 minutes, zero-shot
96.9%, R@1 0.91, pointing 0.67 / 0.59, but it cannot run the ``clear-*`` heatmap methods. The 2-layer tokens are
good probe features: linear-probe mIoU 0.46 vs 0.14 for the same architecture with random weights (256 tokens).
v2: see ``dense/checkpoints/shapes-tiny-v2/training.json``.

Writes ``save_pretrained`` files (model.safetensors, config.json, tokenizer files, preprocessor_config.json) and
``training.json`` (recipe, wall time, held-out figures from ``evaluate``, which reads the SAVED folder through dense's
public pipeline: ``dense.load_encoder``, ``dense.classify``, ``dense.heatmap.patch_scores``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dense.datasets import CATEGORIES, REF_WORDS, render_scene, sample_objects

ROOT = Path(__file__).resolve().parents[1]
TEXT_LEN = 16
SPECIAL = ("<pad>", "</s>", "<unk>")
EXTRA_WORDS = ("photo", "picture", "image", "of", "an", "this", "is", "and", "object", "shape", "with")
TEMPLATES = ("{}", "{}", "the {}", "a {}", "a photo of a {}", "a picture of a {}", "an image of a {}", "this is a {}")
SIZE = 64  # training images are SIZE x SIZE
SINGLE_RADIUS = (0.2, 0.34)  # of the 64-px side, for single-object images
MULTI_RADIUS = (0.13, 0.24)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1] (SigLIP's normalization)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # [B, H, W, 3] -> [B, 3, H, W]
    return x / 127.5 - 1.0


def patch_coverage(masks: np.ndarray, cats: list[int], patch: int) -> np.ndarray:
    """Visible masks bool [N, H, W] of objects of categories ``cats`` -> uint8 [16, gh * gw]: per category, how many
    pixels of each patch its objects cover (0 .. patch**2; several objects of one category add up)."""
    n, H, W = masks.shape
    gh, gw = H // patch, W // patch
    per_obj = masks.reshape(n, gh, patch, gw, patch).sum((2, 4)).reshape(n, gh * gw)  # [N, H, W] -> [N, gh * gw]
    cover = np.zeros((len(CATEGORIES), gh * gw), np.int64)
    np.add.at(cover, np.asarray(cats), per_obj)
    return cover.astype(np.uint8)  # visible masks never overlap: at most patch**2


# ----------------------------------------------------------------------------------------------- tokenizer


def build_tokenizer():
    """Word-level fast tokenizer: lower-case, whitespace/punctuation split, ``</s>`` appended, right padding to 16."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys([*REF_WORDS, *EXTRA_WORDS]))
    vocab = {w: i for i, w in enumerate([*SPECIAL, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="right",
        truncation_side="right",
        model_max_length=TEXT_LEN,
        model_input_names=["input_ids"],  # like SigLIP's own tokenizers: the text tower takes no attention mask
    )


def build_model(tokenizer, layers: int, seed: int):
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    cfg = SiglipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": TEXT_LEN,
            "projection_size": 128,  # must equal the vision hidden size
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 8,
        },
    )
    model = SiglipModel(cfg)
    with torch.no_grad():  # SigLIP's initialization: t = 10, b = -10 (transformers leaves them random)
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model


# ----------------------------------------------------------------------------------------------- data


def _modifier(rng: np.random.Generator, k: int, masks: np.ndarray) -> str:
    """A true size or position word for object k among the image's objects ('' when none is clear)."""
    if len(masks) < 2 or rng.random() < 0.7:
        return ""
    area = masks.sum((1, 2)).astype(float)  # [N]
    ys, xs = [], []
    for m in masks:
        yy, xx = np.nonzero(m)
        ys.append(yy.mean())
        xs.append(xx.mean())
    others = [i for i in range(len(masks)) if i != k]
    options = []
    if area[k] >= 2 * area[others].max():
        options += ["big", "large"]
    if 2 * area[k] <= area[others].min():
        options += ["small"]
    xs, ys = np.asarray(xs), np.asarray(ys)
    if xs[k] + 5 < xs[others].min():
        options.append("on the left")
    if xs[k] - 5 > xs[others].max():
        options.append("on the right")
    if ys[k] + 5 < ys[others].min():
        options.append("at the top")
    if ys[k] - 5 > ys[others].max():
        options.append("at the bottom")
    return options[int(rng.integers(len(options)))] if options else ""


def make_pool(seed: int, n: int, multi: bool, patch: int = 8) -> dict:
    """Pre-drawn 64-px images: ``images`` uint8 [n, 64, 64, 3], ``present`` bool [n, 16], one caption per image,
    ``cover`` uint8 [n, 16, gh * gw] (see ``patch_coverage``; computed from the masks, it draws nothing)."""
    rng = np.random.default_rng([seed, int(multi)])
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    present = np.zeros((n, len(CATEGORIES)), bool)
    cover = np.zeros((n, len(CATEGORIES), (SIZE // patch) ** 2), np.uint8)
    cap_cat = np.empty(n, np.int64)
    captions = []
    cid = {c["name"]: i for i, c in enumerate(CATEGORIES)}
    for i in range(n):
        if multi:
            objs = sample_objects(
                rng,
                (64, 64),
                int(rng.integers(2, 4)),
                radius_frac=MULTI_RADIUS,
                min_visible=0.7,
                repeat_prob=0.2,
            )
        else:
            objs = sample_objects(rng, (64, 64), 1, radius_frac=SINGLE_RADIUS)
        images[i], masks = render_scene(rng, (64, 64), objs)
        for o in objs:
            present[i, cid[o.category]] = True
        cover[i] = patch_coverage(masks, [cid[o.category] for o in objs], patch)
        k = int(rng.integers(len(objs)))
        mod = _modifier(rng, k, masks) if multi else ""
        name = objs[k].category
        if mod in ("big", "large", "small"):
            name = f"{mod} {name}"
        elif mod:
            name = f"{name} {mod}"
        captions.append(TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(name))
        cap_cat[i] = cid[objs[k].category]
    return {"images": images, "present": present, "captions": captions, "cap_cat": cap_cat, "cover": cover}


# ----------------------------------------------------------------------------------------------- training


def sigmoid_loss(img: torch.Tensor, txt: torch.Tensor, pos: torch.Tensor, scale, bias) -> torch.Tensor:
    """img, txt: [B, D] normalized; pos: bool [B, B] (image i contains caption j's category)."""
    logits = img @ txt.T * scale.exp() + bias  # [B, B]
    sign = pos.float() * 2 - 1
    return -F.logsigmoid(sign * logits).sum() / img.shape[0]


def patch_vectors(vision, x: torch.Tensor, prev: torch.Tensor | None, method: str) -> torch.Tensor:
    """Tokens [B, N, D] -> [B, N, E] through dense's own heatmap method (the very function ``dense`` scores with).

    ``prev`` [B, N, D]: the last block's input, for ``clear-*`` methods. dense's methods take one image's [N, D];
    ``torch.func.vmap`` maps them over the batch (differentiably).
    """
    from dense.head import HeadParts
    from dense.heatmap import get_method

    fn, parts = get_method(method).fn, HeadParts.of(vision)  # the model's own modules: gradients reach them
    if prev is None:
        return torch.func.vmap(lambda a: fn(parts, a, None))(x)
    return torch.func.vmap(lambda a, b: fn(parts, a, b))(x, prev)


def patch_loss(z: torch.Tensor, txt: torch.Tensor, target: torch.Tensor, scale, bias) -> torch.Tensor:
    """Per-patch sigmoid loss with the model's own calibration: every caption scores every patch of every image.

    z: [B, N, E] patch vectors; txt: [C, E] normalized caption embeddings; target: [B, C, N] in [0, 1], the patch's
    coverage by objects of caption c's category (soft labels). Mean binary cross-entropy over (image, caption, patch).
    """
    logits = torch.einsum("bne,ce->bcn", F.normalize(z, dim=-1), txt) * scale.exp() + bias  # [B, C, N]
    return F.binary_cross_entropy_with_logits(logits, target)


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, args.layers, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,}", flush=True)

    pools = [make_pool(args.seed, args.pool, multi=False), make_pool(args.seed, args.pool, multi=True)]
    for p in pools:
        p["ids"] = tokenizer(p["captions"], padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    t_data = time.time() - t0
    print(f"pools drawn in {t_data:.0f}s", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    warm = min(200, args.steps // 10)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, args.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = np.random.default_rng([args.seed, 2])
    half = args.batch // 2
    # The 16 category names, pushed apart: without this the text tower collapses onto colour at once ("red circle" ==
    # "red square", cosine 1.00 after 1,500 steps) and the image tower then gets no gradient towards shape.
    class_ids = tokenizer([c["name"] for c in CATEGORIES], padding="max_length", return_tensors="pt")["input_ids"]
    off_diag = ~torch.eye(len(CATEGORIES), dtype=torch.bool)
    patch_px = model.config.vision_config.patch_size**2
    model.train()
    t_train = time.time()
    for step in range(args.steps):
        idx = [gen.integers(0, args.pool, half) for _ in pools]
        images = np.concatenate([p["images"][i] for p, i in zip(pools, idx, strict=True)])  # [B, 64, 64, 3]
        present = np.concatenate([p["present"][i] for p, i in zip(pools, idx, strict=True)])  # [B, 16]
        cap_cat = np.concatenate([p["cap_cat"][i] for p, i in zip(pools, idx, strict=True)])  # [B]
        ids = torch.cat([p["ids"][torch.from_numpy(i)] for p, i in zip(pools, idx, strict=True)])  # [B, L]
        pos = torch.from_numpy(present[:, cap_cat])  # [B images, B captions]
        out = model.vision_model(pixel_values=to_pixels(images), output_hidden_states=args.clear_weight > 0)
        img = F.normalize(out.pooler_output, dim=-1)  # [B, D]: what get_image_features returns
        uniq, inverse = torch.unique(ids, dim=0, return_inverse=True)  # captions repeat: encode each once
        txt = F.normalize(model.get_text_features(input_ids=uniq).pooler_output, dim=-1)[inverse]  # [B, D]
        loss = sigmoid_loss(img, txt, pos, model.logit_scale, model.logit_bias)
        dense_loss = torch.zeros(())
        if args.patch_weight > 0:
            cover = np.concatenate([p["cover"][i] for p, i in zip(pools, idx, strict=True)])  # [B, 16, N] uint8
            target = torch.from_numpy(cover[:, cap_cat]).float() / patch_px  # [B images, B captions, N]
            x = out.last_hidden_state  # [B, N, D], after post_layernorm
            z = patch_vectors(model.vision_model, x, None, "map-value-mlp")
            dense_loss = args.patch_weight * patch_loss(z, txt, target, model.logit_scale, model.logit_bias)
            if args.clear_weight > 0:  # keeps the clear-* path (last block re-run on its input) aligned too
                prev = out.hidden_states[-2]  # [B, N, D]: the last block's input
                zc = patch_vectors(model.vision_model, x, prev, "clear-map-value-mlp")
                dense_loss = dense_loss + args.clear_weight * patch_loss(
                    zc, txt, target, model.logit_scale, model.logit_bias
                )
            loss = loss + dense_loss
        cls = F.normalize(model.get_text_features(input_ids=class_ids).pooler_output, dim=-1)  # [16, D]
        sep = (cls @ cls.T)[off_diag].clamp(min=0).pow(2).mean()  # positive cosines between different names
        sep_weight = args.sep_weight if step < args.sep_steps else args.sep_weight_after
        loss = loss + sep_weight * sep
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            print(
                f"step {step:5d} loss {loss.item():.3f} t {model.logit_scale.exp().item():.1f} "
                f"b {model.logit_bias.item():.2f} sep {sep.item():.3f} dense {dense_loss.item():.3f} "
                f"{el:.0f}s ({el / (step + 1):.3f}s/step)",
                flush=True,
            )
    t_steps = time.time() - t_train
    model.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _save_image_processor(out)
    wall = time.time() - t0
    print(f"trained in {wall:.0f}s; evaluating", flush=True)
    metrics = evaluate(out, seed=args.eval_seed, n_single=args.eval_images, n_point=args.eval_pointing,
                       budgets=tuple(int(b) for b in args.eval_budgets.split(",") if b.strip()))
    record = {
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "sep_weight": [args.sep_weight, args.sep_steps, args.sep_weight_after],
        "patch_weight": args.patch_weight,
        "clear_weight": args.clear_weight,
        "vision_layers": args.layers,
        "pool_per_kind": args.pool,
        "parameters": n_params,
        "threads": args.threads,
        "wall_time_s": round(wall, 1),
        "data_time_s": round(t_data, 1),
        "step_time_s": round(t_steps, 1),
        "torch": torch.__version__,
        "metrics": metrics,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2), flush=True)
    return record


# ----------------------------------------------------------------------------------------------- held-out figures


@torch.no_grad()
def evaluate(
    folder: str | Path,
    *,
    seed: int = 12345,
    n_single: int = 320,
    n_point: int = 120,
    budgets: tuple[int, ...] = (64, 144, 256),
    methods: tuple[str, ...] = ("map-value-mlp", "clear-map-value-mlp"),
    resamples: int = 1000,
) -> dict:
    """Held-out figures of a saved checkpoint, read through dense's evaluators (``dense.load_encoder`` on the folder,
    :func:`dense.eval.zeroshot.evaluate_zero_shot` and :func:`dense.eval.zeroshot.evaluate_pointing`), on images drawn
    from ``seed`` (never a training draw).

    - ``zero_shot_acc``: single-object 64-px images, classes balanced, argmax of ``dense.classify`` over the 16
      category names (verbatim, no templates), each image at its own grid (8 x 8 = 64 tokens at patch 8: the size it
      was drawn at, as in training). ``zero_shot_acc@<budget>`` is the same at the checkpoint's default token budget
      (its calibration's, 256 for the bundled models: each image upsampled 2x), where accuracy is lower.
    - ``*_95``: percentile-bootstrap 95% intervals over images / queries (``resamples`` draws, seed 0).
    - ``pointing/<method>/<budget>``: multi-object (2-4) images of 96..320 px at aspect ratios up to 3, extracted at
      ``max_patches=budget``; each object whose category is unique in its image is a query, a hit when its name's
      peak patch centre lies on the object's visible pixels (dense.eval's pointing rule,
      :func:`dense.eval.zeroshot.peak_point_xy`).
    """
    import dense
    from dense.eval.settings import Bootstrap, Extraction
    from dense.eval.zeroshot import evaluate_pointing, evaluate_zero_shot

    enc = dense.load_encoder(folder)
    names = [c["name"] for c in CATEGORIES]
    rng = np.random.default_rng(seed)
    cats = np.resize(rng.permutation(len(CATEGORIES)), n_single)
    images = []
    for c in cats:
        cat = CATEGORIES[c]
        objs = sample_objects(
            rng, (SIZE, SIZE), 1, radius_frac=SINGLE_RADIUS, categories=[(cat["colour"], cat["shape"])]
        )
        images.append(render_scene(rng, (SIZE, SIZE), objs)[0])
    native = (SIZE // enc.patch_size) ** 2  # the images' own grid: no resize
    boot = Bootstrap(resamples=resamples, seed=0)
    metrics = {}
    for budget in dict.fromkeys((native, enc.pixels.max_patches)):
        res = evaluate_zero_shot(enc, list(zip(images, cats.tolist(), strict=True)), names, templates=("{}",),
                                 extraction=Extraction(max_patches=budget), bootstrap=boot)
        key = "zero_shot_acc" if budget == native else f"zero_shot_acc@{budget}"
        metrics[key] = res.figures["acc"]
        metrics[f"{key}_95"] = list(res.intervals["acc"])
    metrics["zero_shot_tokens"] = native
    metrics["zero_shot_images"] = len(images)

    samples = []  # (image, [(query, visible mask)]): each object whose category is unique in its image
    for _ in range(n_point):
        long = int(rng.integers(96, 321))
        short = max(96, round(long / math.exp(rng.uniform(0, math.log(3.0)))))
        hw = (long, short) if rng.random() < 0.5 else (short, long)
        objs = sample_objects(rng, hw, int(rng.integers(2, 5)))
        img, masks = render_scene(rng, hw, objs)
        obj_cats = [o.category for o in objs]
        unique = [(obj_cats[k], masks[k]) for k, c in enumerate(obj_cats) if obj_cats.count(c) == 1]
        if unique:
            samples.append((img, unique))
    queries = 0
    for b in budgets:
        res = evaluate_pointing(enc, samples, methods=list(methods), templates=("{}",),
                                extraction=Extraction(max_patches=b), bootstrap=boot)
        queries = res.meta["queries"]
        for m in methods:
            metrics[f"pointing/{m}/{b}"] = res.figures[f"{m}/pointing"]
            metrics[f"pointing/{m}/{b}_95"] = list(res.intervals[f"{m}/pointing"])
    metrics["pointing_queries"] = queries
    metrics["eval_seed"] = seed
    metrics["dtype"] = str(enc.dtype).removeprefix("torch.")
    return metrics


def _save_image_processor(out: Path) -> None:
    """preprocessor_config.json: 64 x 64, [-1, 1], so ``AutoProcessor`` users get the training normalization."""
    cfg = {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": 64, "width": 64},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "dense/checkpoints/shapes-tiny-v2"))
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--pool", type=int, default=20000, help="pre-drawn images per kind (single, multi)")
    ap.add_argument("--sep-weight", type=float, default=10.0, help="weight of the name-separation loss at first")
    ap.add_argument("--sep-steps", type=int, default=300)
    ap.add_argument("--sep-weight-after", type=float, default=1.0)
    ap.add_argument(
        "--patch-weight",
        type=float,
        default=30.0,
        help="per-patch loss through the map-value-mlp path (0: the v1 recipe)",
    )
    ap.add_argument(
        "--clear-weight",
        type=float,
        default=5.0,
        help="the same per-patch loss through clear-map-value-mlp (0: off; the v1 recipe)",
    )
    ap.add_argument("--v1", action="store_true", help="the v1 recipe: --patch-weight 0 --clear-weight 0")
    ap.add_argument("--eval-only", metavar="FOLDER", help="print the held-out figures of a saved checkpoint and exit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=12345,
                    help="seed of the held-out images (12345 was read while choosing the recipe: report on others)")
    ap.add_argument("--eval-images", type=int, default=320, help="single-object images of the zero-shot figure")
    ap.add_argument("--eval-pointing", type=int, default=120, help="multi-object images of the pointing figures")
    ap.add_argument("--eval-budgets", default="64,144,256", help="token budgets of the pointing figures")
    ap.add_argument("--threads", type=int, default=1,
                    help="1: more threads than free cores wait at every barrier (benchmarks/threads.py)")
    args = ap.parse_args()
    if args.eval_only:
        torch.set_num_threads(args.threads)
        budgets = tuple(int(b) for b in args.eval_budgets.split(",") if b.strip())
        print(json.dumps(evaluate(args.eval_only, seed=args.eval_seed, n_single=args.eval_images,
                                  n_point=args.eval_pointing, budgets=budgets), indent=2))
        return
    if args.v1:
        args.patch_weight = args.clear_weight = 0.0
    train(args)


if __name__ == "__main__":
    main()
