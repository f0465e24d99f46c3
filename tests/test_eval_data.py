"""dense.eval.data.open_data: one opener of a dataset's splits, checked when opened (before any model)."""

from __future__ import annotations

import json

import pytest

from dense.coco import AnnotationError
from dense.datasets import make_shapes
from dense.eval.data import check_cache_root, open_data


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("data-world")
    make_shapes(root, 12, seed=3)
    return root


def test_a_coco_file_opens_its_splits_and_names_them_when_one_is_missing(world):
    data = open_data(ann=world / "annotations.json", images=world / "images", splits=["train", "val"])
    assert data.kind == "coco" and set(data.splits()) == {"train", "val", "test"}
    ds, sub = data.open("val")
    assert sub == "val" and ds.ids("val") == data.ids("val")
    items = data.items("val")
    assert [k for k, _ in items] == [str(i) for i in ds.ids("val")]
    assert all(p == ds.image_path(int(k)) for k, p in items)
    with pytest.raises(ValueError, match=r"no images in split 'nosuch'; splits present: test, train, val"):
        open_data(ann=world / "annotations.json", images=world / "images", splits=["nosuch"])
    assert len(data.ids(None)) == 12 and len(data.ids("all")) == 12


def test_one_file_per_split_and_a_corrupt_file_fail_naming_the_file(world, tmp_path):
    full = json.loads((world / "annotations.json").read_text())
    for split in ("train", "val"):
        keep = {im["id"] for im in full["images"] if im["split"] == split}
        part = {**full, "images": [im for im in full["images"] if im["id"] in keep],
                "annotations": [a for a in full["annotations"] if a["image_id"] in keep]}
        (tmp_path / f"{split}.json").write_text(json.dumps(part))
    data = open_data(ann=[f"train={tmp_path / 'train.json'}", f"val={tmp_path / 'val.json'}"],
                     images=world / "images", splits=["train", "val"])
    assert data.splits() == ["train", "val"]
    assert data.open("val")[1] is None  # the file of the split holds it whole
    with pytest.raises(ValueError, match="one file per split"):
        data.open(None)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(AnnotationError, match="bad.json"):
        open_data(ann=bad, images=world / "images")


def test_a_folder_has_no_splits_and_an_empty_folder_fails(world, tmp_path):
    data = open_data(images=world / "images", splits=[None])
    assert data.kind == "folder" and data.splits() == []
    assert len(data.items()) == 12
    with pytest.raises(ValueError, match="no splits"):
        data.open("val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        open_data(images=tmp_path / "empty", splits=[None])


def test_a_source_is_given_one_way(world):
    with pytest.raises(ValueError, match="no data"):
        open_data()
    with pytest.raises(ValueError, match="one way"):
        open_data("voc", ann=world / "annotations.json", images=world / "images")
    with pytest.raises(ValueError, match="needs its root"):
        open_data("voc")
    data = open_data(ann=world / "annotations.json", images=world / "images", refs=world / "refs.json")
    assert open_data(data) is data
    refs = data.load_refs("val")
    assert refs and all(r.split == "val" for r in refs)
    with pytest.raises(ValueError, match="splits present"):
        data.load_refs("nosuch")


def test_a_cache_root_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError) as e:
        check_cache_root(f / "sub")
    assert e.value.filename == str(f)
    assert check_cache_root(tmp_path / "new" / "cache") == tmp_path / "new" / "cache"


def test_the_eval_and_probe_commands_check_their_data_before_the_model(world, tmp_path, capsys):
    """Each command opens its data first: with a model that does not exist, the data's error is the one reported."""
    from dense.cli import main

    nomodel = ["--model", str(tmp_path / "no-such-model")]
    ann, images, refs = (str(world / n) for n in ("annotations.json", "images", "refs.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["eval", "openvocab", "--ann", ann, "--images", images, "--split", "nosuch"], 1,
         "no images in split 'nosuch'"),
        (["eval", "openvocab", "--ann", str(bad), "--images", images], 1, "bad.json"),
        (["eval", "refer", "--ann", ann, "--refs", refs, "--images", images, "--split", "nosuch"], 1,
         "no referring expressions in split 'nosuch'"),
        (["eval", "refer", "--ann", str(bad), "--refs", refs, "--images", images], 1, "bad.json"),
        (["probe", "train", "--ann", ann, "--images", images, "--val-split", "nosuch", "--cache",
          str(tmp_path / "c")], 1, "no images in split 'nosuch'"),
        (["probe", "train", "--ann", str(bad), "--images", images, "--cache", str(tmp_path / "c")], 1, "bad.json"),
        (["probe", "test", "--ann", ann, "--images", images, "--probe", ann, "--split", "nosuch", "--cache",
          str(tmp_path / "c")], 1, None),
        (["probe", "train", "--ann", ann, "--images", images, "--cache", str(afile / "sub")], 2,
         "the cache (--cache) must be a folder"),
    ]
    for argv, code, message in cases:
        if code == 2:  # the parser's own check
            with pytest.raises(SystemExit) as e:
                main([*argv, *nomodel])
            assert e.value.code == 2
        else:
            assert main([*argv, *nomodel]) == code, argv
        err = capsys.readouterr().err
        assert "no-such-model" not in err, (argv, err)
        if message:
            assert message in err, (argv, err)


def test_a_folder_extracted_once_serves_the_probe_commands_whichever_folder_was_named(tmp_path, tiny_siglip_dir,
                                                                                      capsys, one_thread):
    """`dense extract --images DIR --cache C` then `dense probe train --ann ... --no-extract` reads the same files'
    entries: with the image folder itself named, or a folder above it."""
    from dense.cli import main

    world = tmp_path / "w"
    make_shapes(world, 8, seed=2, size_range=(64, 96))
    model = ["--model", str(tiny_siglip_dir)]
    train = ["probe", "train", *model, "--ann", str(world / "annotations.json"), "--images", str(world / "images"),
             "--epochs", "1", "--lrs", "0.01", "--no-extract", "--quiet"]
    # nothing extracted: the message names an image and the exact command that fills the cache
    assert main([*train, "--cache", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "not in the cache" in err and "fill it with `dense extract --model" in err and ".png (image id" in err
    assert f"--ann {world / 'annotations.json'} --images {world / 'images'} --cache {tmp_path / 'empty'}" in err
    for named, cache in ((world / "images", tmp_path / "c1"), (world, tmp_path / "c2")):
        assert main(["extract", *model, "--images", str(named), "--cache", str(cache), "--quiet"]) == 0
        capsys.readouterr()
        assert main([*train, "--cache", str(cache)]) == 0, capsys.readouterr().err
    # the features the probe read are the extracted entries themselves (linked, not extracted again)
    from dense.cache import FeatureCache, dataset_namespace
    from dense.coco import load_coco

    ds = load_coco(world / "annotations.json", world / "images")
    spec_dir = next(p for p in (tmp_path / "c1").iterdir() if p.is_dir())
    folder = FeatureCache(tmp_path / "c1", {}, dataset_namespace(world / "images"))
    mine = spec_dir / "data" / ds.identity()
    for i in ds.ids("train"):
        a = mine / f"{i}.safetensors"
        b = spec_dir / "data" / folder.namespace / f"{ds.image_info(i)['file_name']}.safetensors"
        assert a.read_bytes() == b.read_bytes()
