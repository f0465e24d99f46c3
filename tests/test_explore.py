"""dense explore without a browser: the JSON API against the library, path traversal, bad requests, the command."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image

from dense.explore import Explorer, Server, create_app
from dense.explore.app import MAX_TEXT_CHARS
from dense.explore.pictures import view_hw
from dense.explore.server import is_loopback
from dense.preprocess import image_files

SECRET = b"SECRET-OUTSIDE-THE-FOLDER"


def huge_png_header(width: int = 60000, height: int = 60000) -> bytes:
    """A few hundred bytes claiming a 3.6-gigapixel RGB image: what a decompression bomb looks like to a reader."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_folder(root: Path, n: int = 3) -> Path:
    """``root/images``: ``n`` drawn scenes (different aspect ratios), one in a subfolder, a broken file, a huge header,
    a symlink inside the folder and one that leaves it; ``root/secret.png`` lies outside."""
    from dense.datasets import make_shapes

    make_shapes(root / "world", n, seed=3, size_range=(64, 120), max_aspect=2.0)
    images = root / "images"
    images.mkdir()
    src = sorted((root / "world" / "images").iterdir())
    for p in src[:-1]:
        shutil.copy(p, images / p.name)
    (images / "sub dir").mkdir()  # a space and an accent: names travel URL-encoded
    shutil.copy(src[-1], images / "sub dir" / "scène 2.png")
    (images / "broken.png").write_bytes(b"this is not an image")
    (images / "huge.png").write_bytes(huge_png_header())
    (root / "secret.png").write_bytes(SECRET)
    (images / "leak.png").symlink_to(root / "secret.png")
    (images / "alias.png").symlink_to(images / src[0].name)
    return images


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("explore"))


@pytest.fixture(scope="module")
def encoder():
    import dense

    return dense.load_encoder("shapes-tiny-v2", dtype="fp32")


@pytest.fixture(scope="module")
def explorer(encoder, folder) -> Explorer:
    return Explorer(encoder, folder)


@pytest.fixture(scope="module")
def client(explorer):
    return create_app(explorer).test_client()


@pytest.fixture(scope="module")
def server(explorer):
    with Server(create_app(explorer)).start() as srv:
        yield srv


def good_names(explorer) -> list[str]:
    return [n for n in explorer.files if n not in ("broken.png", "huge.png")]


def raw_get(server: Server, path: str) -> tuple[int, bytes]:
    """GET ``path`` sent exactly as written (no client-side normalisation of dots or escapes)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def raw_post(server: Server, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


# --- what is served ---------------------------------------------------------------------------------------------------


def test_only_image_files_inside_the_folder_are_served(folder, explorer):
    names = list(image_files(folder))
    assert "leak.png" not in names  # a symlink whose target leaves the folder
    assert "alias.png" in names and "sub dir/scène 2.png" in names
    assert names == sorted(names) and list(explorer.files) == names
    assert all(p.resolve().is_relative_to(folder.resolve()) for p in explorer.files.values())


def test_page_static_files_and_listing(client, explorer):
    page = client.get("/")
    assert page.status_code == 200 and b'src="static/explore.js"' in page.data
    for name in ("explore.js", "explore.css"):
        assert client.get(f"/static/{name}").status_code == 200
    listing = client.get("/api/images").get_json()
    assert [im["name"] for im in listing["images"]] == list(explorer.files)
    assert listing["model"] == "shapes-tiny-v2" and listing["layers"] == [1]


def test_images_are_served_as_the_library_reads_them_at_view_size(client, explorer, folder):
    from dense.preprocess import load_image

    for name in good_names(explorer):
        res = client.get("/images/" + quote(name))
        assert res.status_code == 200 and res.mimetype == "image/png"
        shown = np.asarray(Image.open(io.BytesIO(res.data)).convert("RGB"))
        rgb = load_image(folder / name)
        assert shown.shape[:2] == view_hw(rgb.shape[:2]) == rgb.shape[:2]  # small images: shown at their own size
        np.testing.assert_array_equal(shown, rgb)
    assert view_hw((3000, 4000)) == (576, 768)


def test_info_gives_geometry(client, explorer):
    name = good_names(explorer)[0]
    info = client.get("/api/image?name=" + quote(name)).get_json()
    fmap = explorer.features(name)
    assert info["image_hw"] == list(fmap.image_hw) and info["grid_hw"] == list(fmap.grid_hw)
    assert info["view_hw"] == list(explorer.view(name).shape[:2]) and "pca" not in info


def test_pca_colours_share_one_basis_across_the_images_shown(client, explorer):
    from dense.features import pca_rgb_shared

    names = good_names(explorer)
    answer = client.post("/api/pca", json={"images": names}).get_json()
    assert answer["basis"] == "shared" and answer["images"] == names
    want = pca_rgb_shared([explorer.features(n) for n in names],
                          sizes_hw=[explorer.view(n).shape[:2] for n in names])
    for r, rgb in zip(answer["results"], want, strict=True):
        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(r["pca"].split(",", 1)[1]))).convert("RGB"))
        np.testing.assert_array_equal(shown, rgb)
    alone = pca_rgb_shared([explorer.features(names[0])], sizes_hw=[explorer.view(names[0]).shape[:2]])[0]
    assert not np.array_equal(alone, want[0])  # the basis of several images is not the first image's own


# --- answers are the library's ----------------------------------------------------------------------------------------


def test_similarity_answer_is_dense_similarity(client, explorer):
    from dense.similarity import similarity_maps

    names = good_names(explorer)
    source = names[1]
    fmap = explorer.features(source)
    H, W = fmap.image_hw
    point = [0.6 * W, 0.3 * H]
    res = client.post("/api/similarity", json={"image": source, "point_xy": point, "images": names})
    assert res.status_code == 200, res.get_json()
    answer = res.get_json()
    want = similarity_maps(fmap, point, [explorer.features(n) for n in names])
    assert answer["patch_ij"] == want.patch_ij.tolist() and answer["layer"] == 1
    assert [r["image"] for r in answer["results"]] == names
    for k, r in enumerate(answer["results"]):
        assert r["peak_ij"] == want.peak_ij[k].tolist()
        assert r["peak_score"] == pytest.approx(want.peak_scores[k], abs=1e-4)
        np.testing.assert_allclose(r["peak_xy"], want.peak_xy[k], atol=0.01)
    assert answer["results"][1]["peak_score"] == pytest.approx(1.0, abs=1e-4)  # the source patch itself
    assert answer["patch_box_xyxy"][0] <= point[0] <= answer["patch_box_xyxy"][2]


def test_heatmap_localize_and_segment_answers_are_the_library_functions(client, explorer, encoder):
    from dense.heatmap import patch_scores
    from dense.openvocab import segment
    from dense.refer import Localizer

    names = good_names(explorer)
    res = client.post("/api/heatmap", json={"queries": ["red circle", "blue star"], "images": names}).get_json()
    for r in res["results"]:
        want = patch_scores(encoder, explorer.features(r["image"]), ["red circle", "blue star"])  # [2, gh, gw]
        assert [m["max"] for m in r["maps"]] == pytest.approx(want.amax(dim=(1, 2)).tolist(), abs=1e-4)
        assert r["maps"][0]["overlay"].startswith("data:image/png;base64,")

    res = client.post("/api/localize", json={"expression": "the red circle", "images": names}).get_json()
    for r in res["results"]:
        loc = Localizer(encoder, explorer.features(r["image"])).localize("the red circle")
        np.testing.assert_allclose(r["box_xyxy"], loc.box_xyxy, atol=0.01)
        np.testing.assert_allclose(r["point_xy"], loc.point_xy, atol=0.01)
        assert r["score"] == pytest.approx(loc.score, abs=1e-4)
        assert r["found"] is bool(getattr(loc, "found", True))

    classes = ["red circle", "blue star", "green square", "yellow triangle"]
    res = client.post("/api/segment", json={"classes": classes, "images": names}).get_json()
    assert [item["name"] for item in res["legend"]] == [*classes, "background (unpainted)"]
    for r in res["results"]:
        labels = segment(encoder, explorer.features(r["image"]), classes)
        assert r["present"] == [classes[k - 1] for k in sorted(set(np.unique(labels).tolist()) - {0})]


def test_duplicate_queries_and_classes_are_answered_once(client, explorer):
    names = good_names(explorer)[:1]
    res = client.post("/api/heatmap", json={"queries": ["red circle", " red circle", "blue star", "red circle"],
                                            "images": names}).get_json()
    assert res["queries"] == ["red circle", "blue star"]
    assert [m["query"] for m in res["results"][0]["maps"]] == ["red circle", "blue star"]
    res = client.post("/api/segment", json={"classes": ["red circle", "red circle"], "images": names}).get_json()
    assert res["classes"] == ["red circle"] and len(res["legend"]) == 2


def test_best_match_is_ringed_only_where_the_way_back_agrees_and_the_cosine_is_high(client, explorer):
    """``consistent``: the target peak's own best match in the clicked image is at least as similar to the clicked
    patch as the peak (dense.similarity both ways); ``ringed``: consistent and at least RING_MIN_COSINE."""
    from dense.explore.explorer import RING_MIN_COSINE
    from dense.similarity import similarity_maps

    names = good_names(explorer)
    seen = set()
    for source in names:
        fmap = explorer.features(source)
        H, W = fmap.image_hw
        for fx, fy in [(0.05, 0.05), (0.5, 0.5), (0.3, 0.7), (0.78, 0.14)]:
            point = [fx * W, fy * H]
            answer = client.post("/api/similarity", json={"image": source, "point_xy": point,
                                                          "images": names}).get_json()
            assert answer["ring_min_cosine"] == RING_MIN_COSINE
            sims = similarity_maps(fmap, point, [explorer.features(n) for n in names])
            home = similarity_maps(fmap, point).maps[0]  # [gh, gw]
            for k, r in enumerate(answer["results"]):
                i, j = similarity_maps(explorer.features(r["image"]), sims.peak_xy[k], [fmap]).peak_ij[0]
                consistent = float(home[i, j]) >= float(sims.maps[k].max())
                assert r["consistent"] is consistent
                assert r["ringed"] is (consistent and bool(sims.peak_scores[k] >= RING_MIN_COSINE))
                seen.add((r["consistent"], r["ringed"]))
            assert answer["results"][names.index(source)]["consistent"]  # a patch is its own best match
    assert {(True, True), (True, False)} <= seen  # a consistent peak below the floor occurs: the floor matters


def test_model_work_of_concurrent_requests_runs_on_one_thread(encoder, folder):
    """Two requests at once (werkzeug gives each its own thread): every model call of both runs on the explorer's
    one model thread."""
    explorer = Explorer(encoder, folder)
    names = good_names(explorer)
    encoder.text_parts()
    threads: list[tuple[int, str]] = []

    def record(module, args):
        threads.append((threading.get_ident(), threading.current_thread().name))

    hooks = [encoder.vision.register_forward_pre_hook(record), encoder.text_parts().model.register_forward_pre_hook(
        record)]
    answers: list[int] = []
    start = threading.Barrier(2)

    def ask(path, body):
        start.wait()
        answers.append(raw_post(srv, path, json.dumps(body).encode())[0])

    try:
        with Server(create_app(explorer), explorer=explorer).start() as srv:
            asks = [threading.Thread(target=ask, args=("/api/similarity", {"image": names[0], "point_xy": [1, 1],
                                                                              "images": names})),
                    threading.Thread(target=ask, args=("/api/heatmap", {"queries": ["a new query 17"],
                                                                           "images": names}))]
            for t in asks:
                t.start()
            for t in asks:
                t.join(timeout=300)
            model_thread = explorer.worker.ident
    finally:
        for h in hooks:
            h.remove()
    assert answers == [200, 200]
    assert threads and {ident for ident, _ in threads} == {model_thread}
    assert model_thread != threading.get_ident() and threads[0][1].startswith("dense-model")


def test_empty_folder_is_an_error_naming_it(encoder, tmp_path, capsys):
    from dense.cli import main
    from dense.preprocess import IMAGE_EXTS

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty: no images found"):
        Explorer(encoder, tmp_path / "empty")
    # before the model loads: a model that does not exist is never reached
    assert main(["explore", "--model", str(tmp_path / "no-model"), "--images", str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().err.strip() == (f"dense: error: {tmp_path / 'empty'}: no images found (looked for "
                                               f"{', '.join(IMAGE_EXTS)})")


def test_features_are_extracted_once_and_kept_in_the_disk_cache(encoder, folder, tmp_path):
    passes: list[int] = []  # the batch size of every pass through the tower's first block
    hook = encoder.vision.encoder.layers[0].register_forward_hook(lambda m, a, out: passes.append(a[0].shape[0]))
    try:
        first = Explorer(encoder, folder, cache=tmp_path / "cache")
        name = good_names(first)[0]
        tokens = first.features(name).tokens
        first.info(name)
        first.similarity(name, (1, 1), images=[name])
        assert passes == [1]
        assert name in first.cache.keys()
        again = Explorer(encoder, folder, cache=tmp_path / "cache")  # a restart: read from disk, not extracted
        torch.testing.assert_close(again.features(name).tokens, tokens)
        assert passes == [1]
    finally:
        hook.remove()


def test_images_are_prepared_together_in_batches_with_the_tokens_of_one_image_alone(encoder, folder, client):
    """/api/prepare extracts the images not held yet in passes of batch_size (mixed grids padded and masked), the
    unreadable ones reported by name; each image's tokens are those of Encoder.extract on it alone."""
    from dense.preprocess import load_image

    explorer = Explorer(encoder, folder, batch_size=2)
    names = list(explorer.files)
    passes: list[int] = []
    hook = encoder.vision.encoder.layers[0].register_forward_hook(lambda m, a, out: passes.append(a[0].shape[0]))
    try:
        answer = create_app(explorer).test_client().post("/api/prepare", json={"images": names}).get_json()
        assert passes == [2, 2]  # 4 readable images (3 scenes and an alias), two passes of 2
        explorer.prepare(names)
        assert passes == [2, 2]  # held: nothing extracted again
    finally:
        hook.remove()
    assert answer["ready"] == good_names(explorer)
    assert set(answer["errors"]) == {"broken.png", "huge.png"} and "broken.png:" in answer["errors"]["broken.png"]
    for name in answer["ready"]:
        alone = encoder.extract(load_image(folder / name), layers=explorer.layers)
        torch.testing.assert_close(explorer.features(name).tokens, alone.tokens, atol=1e-5, rtol=0)
    explorer.close()


# --- safety -----------------------------------------------------------------------------------------------------------


def test_path_traversal_is_refused_in_every_spelling(server, folder):
    secret = (folder.parent / "secret.png").resolve()
    spellings = [
        "/images/../secret.png",
        "/images/%2e%2e/secret.png",
        "/images/%2E%2E%2Fsecret.png",
        "/images/..%2fsecret.png",
        "/images/sub%20dir/../../secret.png",
        "/images/" + str(secret),
        "/images/" + quote(str(secret), safe=""),
        "/images/leak.png",
        "/static/../../secret.png",
        "/static/%2e%2e/server.py",
        "/../secret.png",
        "/%2e%2e/secret.png",
    ]
    for path in spellings:
        status, body = raw_get(server, path)
        assert status == 404, (path, status)
        assert SECRET not in body and b"import" not in body
    assert raw_get(server, "/images/" + quote("sub dir/scène 2.png"))[0] == 200
    assert raw_get(server, "/images/alias.png")[0] == 200  # a symlink that stays inside the folder


def test_bad_and_huge_images_get_a_message_not_a_dead_server(client, server):
    res = client.get("/api/image?name=broken.png")
    assert res.status_code == 422 and res.get_json()["error"] == "broken.png: not an image PIL can read"
    res = client.get("/api/image?name=huge.png")
    assert res.status_code == 422 and "huge.png: refused as a possible decompression bomb" in res.get_json()["error"]
    assert client.get("/images/huge.png").status_code == 422
    res = client.post("/api/similarity", json={"image": "broken.png", "point_xy": [1, 1]})
    assert res.status_code == 422
    # the unreadable images are skipped where a request names every image
    listing = client.get("/api/images").get_json()
    names = [im["name"] for im in listing["images"]]
    res = client.post("/api/heatmap", json={"queries": ["red circle"], "images": names})
    assert res.status_code == 200
    assert {r["image"] for r in res.get_json()["results"]} == set(names) - {"broken.png", "huge.png"}
    assert raw_get(server, "/api/images")[0] == 200


def _bad_requests(name: str, W: int, H: int) -> list[tuple[str, bytes, int, str]]:
    """(path, body, status, what the error names)."""
    j = lambda obj: json.dumps(obj).encode()  # noqa: E731
    sim = "/api/similarity"
    return [
        (sim, j({"image": name, "point_xy": [W + 5, 1]}), 400, "outside the image"),
        (sim, j({"image": name, "point_xy": [-1, 1]}), 400, "outside the image"),
        (sim, j({"image": name, "point_xy": [1, H * 10]}), 400, "outside the image"),
        (sim, j({"image": name, "point_xy": ["a", "b"]}), 400, "point_xy"),
        (sim, j({"image": name, "point_xy": [1]}), 400, "point_xy"),
        (sim, j({"image": name}), 400, "point_xy"),
        (sim, b'{"image": "%s", "point_xy": [NaN, 1]}' % name.encode(), 400, "point_xy"),
        (sim, j({"image": name, "point_xy": [1, 1], "layer": 99}), 400, "layer"),
        (sim, j({"image": name, "point_xy": [1, 1], "layer": 0}), 400, "layer 0"),
        (sim, j({"image": name, "point_xy": [1, 1], "layer": "last"}), 400, "layer"),
        (sim, j({"image": name, "point_xy": [1, 1], "images": "all"}), 400, "images"),
        (sim, j({"image": name, "point_xy": [1, 1], "images": ["../secret.png"]}), 404, "not one of the images"),
        (sim, j({"image": "../secret.png", "point_xy": [1, 1]}), 404, "not one of the images"),
        (sim, j({"image": None, "point_xy": [1, 1]}), 404, "not one of the images"),
        (sim, b"not json", 400, "JSON object"),
        (sim, j([1, 2]), 400, "JSON object"),
        ("/api/heatmap", j({"queries": []}), 400, "queries"),
        ("/api/heatmap", j({"queries": [""]}), 400, "empty"),
        ("/api/heatmap", j({"queries": ["   "]}), 400, "empty"),
        ("/api/heatmap", j({"queries": ["x" * 10_000]}), 400, "10000 characters"),
        ("/api/heatmap", j({"queries": ["red"] * 17}), 400, "queries"),
        ("/api/heatmap", j({"queries": [3]}), 400, "queries"),
        ("/api/heatmap", j({"queries": ["x" * 100_000]}), 413, "413"),
        ("/api/localize", j({"expression": ""}), 400, "expression"),
        ("/api/localize", j({"expression": "y" * 10_000}), 400, "10000 characters"),
        ("/api/localize", j({"expression": ["a", "b"]}), 400, "expression"),
        ("/api/segment", j({"classes": []}), 400, "classes"),
        ("/api/segment", j({"classes": ["z" * (MAX_TEXT_CHARS + 1)]}), 400, "characters"),
        ("/api/nothing", j({}), 404, "404"),
    ]


def test_absurd_requests_get_4xx_and_the_server_keeps_answering(server, explorer):
    name = good_names(explorer)[0]
    H, W = explorer.features(name).image_hw
    cases = _bad_requests(name, W, H)
    sent = 0
    while sent < 100:
        path, body, status, what = cases[sent % len(cases)]
        got, reply = raw_post(server, path, body)
        assert got == status, (path, body[:80], got, reply[:200])
        assert what in json.loads(reply)["error"], (path, reply)
        sent += 1
    assert raw_get(server, "/api/similarity")[0] == 405  # GET on a POST endpoint
    good = json.dumps({"image": name, "point_xy": [W / 2, H / 2]}).encode()
    status, reply = raw_post(server, "/api/similarity", good)
    assert status == 200 and json.loads(reply)["patch_ij"] == explorer.features(name).pixel_to_grid((W / 2, H / 2)
                                                                                                   ).tolist()


def test_binds_to_loopback_by_default(explorer):
    with Server(create_app(explorer)) as srv:
        assert srv.host == "127.0.0.1" and srv.port > 0 and srv.url == f"http://127.0.0.1:{srv.port}/"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")


def test_jupyter_show_returns_an_iframe_to_a_running_server(encoder, folder):
    pytest.importorskip("IPython")
    import dense

    frame = dense.explore.show(encoder, folder, height=500)
    server = dense.explore._RUNNING[-1]
    try:
        assert frame.src == server.url and frame.height == 500 and server.host == "127.0.0.1"
        assert raw_get(server, "/")[0] == 200
    finally:
        server.close()
        dense.explore._RUNNING.remove(server)


# --- the command ------------------------------------------------------------------------------------------------------


def test_cli_refuses_bad_options_in_one_line(folder, capsys):
    from dense.cli import main

    for flag, value, why in (("--port", "70000", "must be 0..65535, got 70000"),
                             ("--max-images", "-1", "must be at least 0, got -1")):
        with pytest.raises(SystemExit) as e:  # a malformed command line: exit 2, before Flask or the model
            main(["explore", "--model", "shapes-tiny-v2", "--images", str(folder), flag, value])
        assert e.value.code == 2 and f"argument {flag}: {why}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["explore", "--model", "shapes-tiny-v2", "--images", str(folder / "nope")])
    assert "nope: no such folder" in capsys.readouterr().err


def _listening_on(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) listening on ``port``."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if int(p, 16) == port and state == "0A":  # 0A: LISTEN
                out.append(addr)
    return out


@pytest.mark.slow
def test_dense_explore_command_serves_the_page_on_loopback(folder):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dense.cli", "explore", "--model", "shapes-tiny-v2", "--images",
                             str(folder), "--dtype", "fp32"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"at http://127\.0\.0\.1:(\d+)/$", line.strip())
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(m.group(1))
        assert "6 images from" in line  # 3 scenes, broken, huge, alias; not the symlink that leaves the folder
        assert _listening_on(port) == ["0100007F"]  # 127.0.0.1 only
        srv = SimpleNamespace(host="127.0.0.1", port=port)
        status, body = raw_get(srv, "/")
        assert status == 200 and b"dense explore" in body
        assert raw_get(srv, "/images/%2e%2e/secret.png")[0] == 404
    finally:
        proc.send_signal(2)  # Ctrl-C
        try:
            rc = proc.wait(timeout=300)  # a hang guard, not a speed limit
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0 and _listening_on(port) == []  # Ctrl-C is the way to stop it: a clean exit
