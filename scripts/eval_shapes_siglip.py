"""Held-out quality of a SigLIP trained on the synthetic shapes world (``dense.datasets``).

    python scripts/eval_shapes_siglip.py [--model dense/checkpoints/shapes-tiny] [--seed 12345] [--n 800]

Prints (and returns from ``evaluate``) named figures:
- ``zero_shot_acc``: single-object 64-px images, argmax over the 16 category names ("red circle", ...).
- ``retrieval_r1``: multi-object (2-3 objects) 64-px images -> the 16 category names; a hit when the top-ranked name
  is in the image. ``retrieval_topk_recall``: the fraction of an image's k categories found in its top k names.
- ``pointing_64`` / ``pointing_native``: "map-value" dense score (below); a hit when the argmax patch's centre lies
  inside the named object's visible mask. Each object whose category is unique in its image is one query. ``_native``
  uses images of 96..320 px at their own aspect ratio, resized to a patch grid of about ``native_tokens`` tokens with
  ``interpolate_pos_encoding=True``. Chance is the named object's share of the image (about 10%).

The map-value dense score: each last-layer patch token (after ``post_layernorm``) goes through the MAP head as if the
head's attention were all on it: value projection (third block of ``head.attention.in_proj_weight``), ``out_proj``,
then the head's MLP residual ``h + mlp(layernorm(h))``; its cosine with the text embedding scores the patch.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dense.datasets import CATEGORIES, SHAPES, render_scene, sample_objects

PROMPT = "{}"  # category names are the prompts: "red circle"
SINGLE_RADIUS = (0.2, 0.34)  # of the 64-px side, for single-object images
MULTI_RADIUS = (0.13, 0.24)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1] (SigLIP's normalization)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # [B, H, W, 3] -> [B, 3, H, W]
    return x / 127.5 - 1.0


def draw_single(rng: np.random.Generator, n: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """n single-object images uint8 [n, size, size, 3] and their category indices [n] (0-based), classes balanced."""
    cats = np.resize(rng.permutation(len(CATEGORIES)), n)
    imgs = np.empty((n, size, size, 3), np.uint8)
    for i, c in enumerate(cats):
        cat = CATEGORIES[c]
        objs = sample_objects(
            rng, (size, size), 1, radius_frac=SINGLE_RADIUS, categories=[(cat["colour"], cat["shape"])]
        )
        imgs[i], _ = render_scene(rng, (size, size), objs)
    return imgs, cats


def draw_multi(rng: np.random.Generator, hw: tuple[int, int], n_objects: int, radius_frac=MULTI_RADIUS):
    """One multi-object image: (image uint8 [H, W, 3], objects, visible masks bool [N, H, W])."""
    objs = sample_objects(rng, hw, n_objects, radius_frac=radius_frac, min_visible=0.7, repeat_prob=0.2)
    img, masks = render_scene(rng, hw, objs)
    return img, objs, masks


@torch.no_grad()
def text_embeddings(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """[T, D] L2-normalized text embeddings (right-padded to the model's fixed text length)."""
    ids = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    return F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)


@torch.no_grad()
def image_embeddings(model, pixels: torch.Tensor, interpolate: bool = False) -> torch.Tensor:
    out = model.get_image_features(pixel_values=pixels, interpolate_pos_encoding=interpolate)
    return F.normalize(out.pooler_output, dim=-1)


@torch.no_grad()
def map_value_tokens(model, pixels: torch.Tensor, interpolate: bool = False) -> torch.Tensor:
    """[B, 3, H, W] -> [B, N, D] patch tokens in the pooled-embedding space (the map-value score's image side)."""
    vm = model.vision_model
    x = vm(pixel_values=pixels, interpolate_pos_encoding=interpolate).last_hidden_state  # [B, N, D]
    head = vm.head
    D = x.shape[-1]
    attn = head.attention
    w_v, b_v = attn.in_proj_weight[2 * D :], attn.in_proj_bias[2 * D :]
    h = attn.out_proj(F.linear(x, w_v, b_v))  # [B, N, D]
    return h + head.mlp(head.layernorm(h))


def _category_names() -> list[str]:
    return [PROMPT.format(c["name"]) for c in CATEGORIES]


def _grid_for(hw: tuple[int, int], patch: int, tokens: int) -> tuple[int, int]:
    """(gh, gw) near ``tokens`` patches with the image's aspect ratio."""
    H, W = hw
    gh = max(1, round(math.sqrt(tokens * H / W)))
    gw = max(1, round(math.sqrt(tokens * W / H)))
    return gh, gw


def _pointing(model, tokenizer, rng, n_images: int, native: bool, native_tokens: int, size_range=(96, 320)) -> dict:
    import cv2

    patch = model.config.vision_config.patch_size
    txt = text_embeddings(model, tokenizer, _category_names())  # [16, D]
    hits = queries = 0
    for _ in range(n_images):
        if native:
            lo, hi = size_range
            long = int(rng.integers(lo, hi + 1))
            short = max(lo, round(long / math.exp(rng.uniform(0, math.log(3.0)))))
            hw = (long, short) if rng.random() < 0.5 else (short, long)
            img, objs, masks = draw_multi(rng, hw, int(rng.integers(2, 5)), radius_frac=(0.1, 0.22))
            gh, gw = _grid_for(hw, patch, native_tokens)
            resized = cv2.resize(img, (gw * patch, gh * patch), interpolation=cv2.INTER_AREA)
        else:
            hw = (64, 64)
            img, objs, masks = draw_multi(rng, hw, int(rng.integers(2, 4)))
            gh, gw = 64 // patch, 64 // patch
            resized = img
        tokens = F.normalize(map_value_tokens(model, to_pixels(resized[None]), interpolate=native)[0], dim=-1)
        cats = [o.category for o in objs]
        H, W = hw
        for k, o in enumerate(objs):
            if cats.count(o.category) != 1:
                continue
            c = next(i for i, cat in enumerate(CATEGORIES) if cat["name"] == o.category)
            score = (tokens @ txt[c]).reshape(gh, gw)  # [N] -> [gh, gw]
            i, j = divmod(int(score.argmax()), gw)
            y = int((i + 0.5) * patch * H / (gh * patch))  # patch centre, resized -> original pixels
            x = int((j + 0.5) * patch * W / (gw * patch))
            hits += bool(masks[k][min(y, H - 1), min(x, W - 1)])
            queries += 1
    return {"acc": hits / max(queries, 1), "queries": queries}


@torch.no_grad()
def evaluate(
    model, tokenizer, *, seed: int = 12345, n: int = 800, n_point: int = 300, native_tokens: int = 100
) -> dict:
    """Held-out figures (see the module docstring). Images are drawn from ``seed``, disjoint from training draws."""
    model.eval()
    rng = np.random.default_rng(seed)
    txt = text_embeddings(model, tokenizer, _category_names())  # [16, D]

    imgs, cats = draw_single(rng, n)
    pred = torch.cat([(image_embeddings(model, to_pixels(b)) @ txt.T).argmax(-1) for b in np.array_split(imgs, 8)])
    pred = pred.numpy()
    zero_shot = float((pred == cats).mean())
    colour_acc = float(
        np.mean([CATEGORIES[p]["colour"] == CATEGORIES[c]["colour"] for p, c in zip(pred, cats, strict=True)])
    )
    shape_acc = float(
        np.mean([CATEGORIES[p]["shape"] == CATEGORIES[c]["shape"] for p, c in zip(pred, cats, strict=True)])
    )

    r1 = recall = 0.0
    names = [c["name"] for c in CATEGORIES]
    for _ in range(n // 2):
        img, objs, _ = draw_multi(rng, (64, 64), int(rng.integers(2, 4)))
        present = {names.index(o.category) for o in objs}
        order = (image_embeddings(model, to_pixels(img[None])) @ txt.T)[0].argsort(descending=True).tolist()
        r1 += order[0] in present
        recall += len(present & set(order[: len(present)])) / len(present)
    p64 = _pointing(model, tokenizer, rng, n_point, native=False, native_tokens=native_tokens)
    pnat = _pointing(model, tokenizer, rng, n_point, native=True, native_tokens=native_tokens)
    return {
        "zero_shot_acc": zero_shot,
        "zero_shot_colour_acc": colour_acc,
        "zero_shot_shape_acc": shape_acc,
        "retrieval_r1": r1 / (n // 2),
        "retrieval_topk_recall": recall / (n // 2),
        "pointing_64": p64["acc"],
        "pointing_native": pnat["acc"],
        "pointing_queries": p64["queries"] + pnat["queries"],
        "eval_seed": seed,
        "n_shapes": len(SHAPES),
    }


def main() -> None:
    from transformers import AutoTokenizer, SiglipModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "dense/checkpoints/shapes-tiny"))
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = SiglipModel.from_pretrained(args.model, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    print(json.dumps(evaluate(model, tokenizer, seed=args.seed, n=args.n), indent=2))


if __name__ == "__main__":
    main()
