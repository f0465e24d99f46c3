"""EXIF orientation: annotated data (COCO files, dense.segdata datasets) is read in the geometry of its annotation, a
user's photo upright. Fixtures are JPEGs written here with PIL, orientations 3, 6 and 8, square and not, whose pixels
are the colours of their label map: a nearest-colour "predictor" scores 100 % exactly when the pixels are read in the
label map's geometry, and a wrong rotation changes the score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from dense.errors import AnnotationError, ImageError
from dense.preprocess import AnnotatedPath, annotated_path, load_image, read_geometry, read_hw

COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)  # class k <-> COLOURS[k]
NAMES = ["background", "red", "green", "blue"]
# PIL's exif_transpose applies these; the stored pixels of an upright drawing are their inverses
INVERSE = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}

# (name, EXIF orientation, stored (H, W), the geometry the label map was drawn in)
CASES = [("o3-wide", 3, (48, 64), "stored"),  # 180 degrees: both orientations 48 x 64, the references read stored
         ("o6-wide-stored", 6, (48, 64), "stored"),
         ("o6-wide-upright", 6, (48, 64), "upright"),  # labelled in a tool that showed the photo upright
         ("o8-tall-upright", 8, (64, 48), "upright"),
         ("o8-tall-stored", 8, (64, 48), "stored"),
         ("o3-square", 3, (64, 64), "stored"),
         ("o6-square", 6, (64, 64), "stored"),  # square: both sizes match, stored pixels
         ("o8-square", 8, (64, 64), "stored"),
         ("plain", 1, (48, 64), "stored")]


def drawing(hw) -> np.ndarray:
    """A label map no rotation or flip maps onto itself (blocks on the 8-px JPEG grid)."""
    lab = np.zeros(hw, np.int64)
    lab[: hw[0] // 2, : hw[1] // 2 - 8] = 1
    lab[hw[0] // 2:, hw[1] // 2:] = 2
    lab[:16, -16:] = 3
    return lab


def write_case(folder: Path, name: str, tag: int, stored_hw, labelled: str) -> np.ndarray:
    """``folder/name.jpg`` with orientation ``tag``; returns the label map in the geometry it was drawn in."""
    upright_hw = stored_hw[::-1] if tag in (5, 6, 7, 8) else stored_hw
    label = drawing(stored_hw if labelled == "stored" else upright_hw)
    picture = Image.fromarray(COLOURS[label])
    if labelled == "upright" and tag != 1:
        picture = picture.transpose(INVERSE[tag])  # the stored pixels of the upright drawing
    exif = Image.Exif()
    if tag != 1:
        exif[0x0112] = tag
    folder.mkdir(parents=True, exist_ok=True)
    picture.save(folder / f"{name}.jpg", quality=100, subsampling=0, exif=exif)
    with Image.open(folder / f"{name}.jpg") as im:  # the fixture is what it says
        assert (im.height, im.width) == tuple(stored_hw)
        if labelled == "upright":
            assert np.array_equal(nearest_colour(np.asarray(ImageOps.exif_transpose(im).convert("RGB"))), label)
    return label


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """The oracle: each pixel's class is its nearest colour. ``[H, W, 3]`` -> ``[H, W]``."""
    d = ((rgb[:, :, None, :].astype(np.int64) - COLOURS[None, None].astype(np.int64)) ** 2).sum(-1)
    return d.argmin(-1)


def accuracy(rgb: np.ndarray, label: np.ndarray) -> float:
    """Pixel accuracy of the oracle; 0 when the pixels are not in the label map's geometry at all."""
    return float((nearest_colour(rgb) == label).mean()) if rgb.shape[:2] == label.shape else 0.0


def test_read_hw_known_answers():
    assert read_hw((48, 64), 6, (48, 64), "x") == (False, (48, 64))
    assert read_hw((48, 64), 6, (64, 48), "x") == (True, (64, 48))
    assert read_hw((48, 64), 3, (48, 64), "x") == (False, (48, 64))  # both orientations match: stored
    assert read_hw((64, 64), 8, (64, 64), "x") == (False, (64, 64))
    with pytest.raises(ImageError, match=r"^x\.jpg: stored 48 x 64 .* orientation 6 .* annotation is 50 x 50"):
        read_hw((48, 64), 6, (50, 50), "x.jpg")


def test_load_image_reads_annotated_data_in_its_annotations_geometry(tmp_path):
    """Every case scores 100 % read in the annotation's geometry; read upright (a user's photo), every tagged case
    but the two whose label was drawn upright scores less."""
    for name, tag, stored_hw, labelled in CASES:
        label = write_case(tmp_path, name, tag, stored_hw, labelled)
        path = tmp_path / f"{name}.jpg"
        annotated = annotated_path(path, label.shape)
        assert accuracy(load_image(annotated), label) == 1.0, name
        assert read_geometry(annotated) == (label.shape, tag), name
        upright = load_image(path)  # a user's photo: the tag applied
        with Image.open(path) as im:
            assert np.array_equal(upright, np.asarray(ImageOps.exif_transpose(im).convert("RGB"))), name
        if tag == 1 or labelled == "upright":
            assert accuracy(upright, label) == 1.0, name
        else:
            assert accuracy(upright, label) < 0.8, name  # a wrong rotation changes the score
        lazily = annotated_path(path, lambda hw=label.shape: hw)  # a label file's size, read when needed
        assert np.array_equal(load_image(lazily), load_image(annotated)), name
    with pytest.raises(ImageError, match="o6-wide-stored.jpg: stored 48 x 64"):
        load_image(annotated_path(tmp_path / "o6-wide-stored.jpg", (40, 40)))  # neither orientation: named
    assert type((tmp_path / "x").parent) is not AnnotatedPath


def voc_root(base: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A VOC-layout folder (JPEGImages, palette SegmentationClass PNGs, ImageSets/Segmentation/train.txt)."""
    root = base / "VOC2012"
    labels = {}
    for name, tag, stored_hw, labelled in CASES:
        labels[name] = write_case(root / "JPEGImages", name, tag, stored_hw, labelled)
        im = Image.fromarray(labels[name].astype(np.uint8), mode="P")
        im.putpalette(COLOURS.flatten().tolist() + [0] * (768 - COLOURS.size))
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        im.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{n}\n" for n in labels))
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return root, labels


def test_segdata_reads_and_checks_in_the_label_maps_geometry(tmp_path, tiny_encoder):
    from dense.segdata import load_dataset

    root, labels = voc_root(tmp_path)
    ds = load_dataset("voc", root, splits=["train"], check_files=True)  # sizes compared as read: no error
    for name, label in labels.items():
        assert np.array_equal(ds.label_map(name), label)
        assert accuracy(load_image(ds.image_path(name)), label) == 1.0, name
        assert tiny_encoder.extract(ds.image_path(name), max_patches=16).image_hw == label.shape, name
    fmaps = list(tiny_encoder.extract_many([ds.image_path(n) for n in labels], max_patches=16))
    assert [f.image_hw for f in fmaps] == [lab.shape for lab in labels.values()]
    assert ds.exif_tagged(ds.ids("train")) == len(CASES) - 1
    # a label map of neither orientation's size: named before anything is read
    Image.fromarray(np.zeros((40, 40), np.uint8), mode="P").save(root / "SegmentationClass" / "o6-wide-upright.png")
    with pytest.raises(AnnotationError, match=r"o6-wide-upright.png: label map is 40 x 40 .* 48 x 64 stored, EXIF "
                                              r"orientation 6"):
        load_dataset("voc", root, splits=["train"], check_files=True)


def coco_file(base: Path, labels: dict[str, np.ndarray], images: Path) -> Path:
    """A COCO instances file: each image's width and height those of its label map, one RLE mask per class."""
    from pycocotools import mask as mask_utils

    data = {"images": [], "annotations": [], "categories": [{"id": k, "name": n} for k, n in enumerate(NAMES)
                                                            if k]}
    for iid, (name, label) in enumerate(labels.items(), start=1):
        data["images"].append({"id": iid, "file_name": f"{name}.jpg", "height": label.shape[0],
                               "width": label.shape[1], "split": "test"})
        for k in range(1, len(NAMES)):
            m = np.asfortranarray((label == k).astype(np.uint8))
            rle = mask_utils.encode(m)
            x, y, w, h = mask_utils.toBbox(rle).tolist()
            data["annotations"].append({"id": 100 * iid + k, "image_id": iid, "category_id": k, "iscrowd": 0,
                                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                                        "area": float(m.sum()), "bbox": [x, y, w, h]})
    path = base / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_reads_and_checks_in_the_files_geometry(tmp_path):
    from dense.coco import load_coco

    labels = {name: write_case(tmp_path / "images", name, tag, hw, how) for name, tag, hw, how in CASES}
    ds = load_coco(coco_file(tmp_path, labels, tmp_path / "images"), tmp_path / "images")
    ds.check_files()
    for iid in ds.ids():
        name = Path(ds.image_info(iid)["file_name"]).stem
        assert np.array_equal(ds.label_map(iid), labels[name])
        assert accuracy(load_image(ds.image_path(iid)), labels[name]) == 1.0, name
    assert ds.exif_tagged(ds.ids()) == len(CASES) - 1
    data = json.loads((tmp_path / "instances.json").read_text())
    data["images"][2]["height"], data["images"][2]["width"] = 40, 40
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != data["images"][2]["id"]]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"bad.json: image id 3 is 40 x 40 .*/o6-wide-upright.jpg is 48 x 64 "
                                              r"stored, EXIF orientation 6"):
        load_coco(tmp_path / "bad.json", tmp_path / "images").check_files()


def test_the_openvocab_evaluator_reads_tagged_coco_images_as_annotated(tmp_path, tiny_encoder):
    """The evaluator scores every tagged image against its labels (it refused the upright-labelled ones: "image is
    (64, 48), annotation says (48, 64)") and says how many carried a tag."""
    from dense.eval.openvocab import evaluate_openvocab

    labels = {name: write_case(tmp_path / "images", name, tag, hw, how) for name, tag, hw, how in CASES}
    ann = coco_file(tmp_path, labels, tmp_path / "images")
    from dense.eval.data import open_data
    from dense.eval.settings import Bootstrap, Extraction

    res = evaluate_openvocab(tiny_encoder, open_data(ann=ann, images=tmp_path / "images"), split="test",
                             bootstrap=Bootstrap(resamples=10), extraction=Extraction(max_patches=16))
    assert res.meta["images"] == len(CASES)
    assert res.meta["exif_tagged"] == len(CASES) - 1


def test_a_users_tagged_photo_is_read_upright(tmp_path, tiny_encoder):
    write_case(tmp_path, "photo", 6, (48, 64), "stored")
    assert load_image(tmp_path / "photo.jpg").shape[:2] == (64, 48)
    assert load_image(str(tmp_path / "photo.jpg")).shape[:2] == (64, 48)
    assert tiny_encoder.extract(tmp_path / "photo.jpg", max_patches=16).image_hw == (64, 48)


def test_the_refer_evaluator_reads_tagged_coco_images_as_annotated(tmp_path, tiny_encoder):
    """The referring evaluator compared the image read upright with the file's height and width and refused the
    upright-labelled images ("image is (64, 48), annotation says (48, 64)"); it now scores them all."""
    from dense.eval.refer import evaluate_refer

    labels = {name: write_case(tmp_path / "images", name, tag, hw, how) for name, tag, hw, how in CASES}
    ann = coco_file(tmp_path, labels, tmp_path / "images")
    data = json.loads(ann.read_text())
    refs = [{"ref_id": a["id"], "ann_id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
             "split": "test", "sentences": [{"sent": NAMES[a["category_id"]]}]} for a in data["annotations"]]
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    from dense.eval.data import open_data
    from dense.eval.settings import Bootstrap, Extraction

    res = evaluate_refer(tiny_encoder, open_data(ann=ann, images=tmp_path / "images", refs=tmp_path / "refs.json"),
                         split="test", bootstrap=Bootstrap(resamples=10), extraction=Extraction(max_patches=16))
    assert res.meta["images"] == len(CASES) and res.meta["expressions"] == len(refs)
    assert res.meta["exif_tagged"] == len(CASES) - 1


def test_the_explorer_shows_a_tagged_photo_upright(tmp_path, tiny_encoder):
    import io

    from dense.explore import Explorer, create_app

    write_case(tmp_path / "photos", "photo", 6, (48, 64), "stored")
    client = create_app(Explorer(tiny_encoder, tmp_path / "photos")).test_client()
    res = client.get("/images/photo.jpg")
    assert res.status_code == 200
    shown = np.asarray(Image.open(io.BytesIO(res.data)).convert("RGB"))
    assert shown.shape[:2] == (64, 48)
    np.testing.assert_array_equal(shown, load_image(tmp_path / "photos" / "photo.jpg"))
