"""dense explore in a real browser: Debian's Chromium driven by Playwright for Python.

Skips, saying why, where Playwright or a Chromium cannot be found or started (CI installs both: see .ci/run).
``DENSE_SCREENSHOTS=DIR`` keeps the screenshots in DIR (else they go to pytest's tmp folder).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("DENSE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set DENSE_CHROMIUM)")
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
    except Exception as e:  # a browser that cannot start here: say why, and skip
        pw.stop()
        pytest.skip(f"Chromium at {path} does not start: {str(e).strip().splitlines()[0]}")
    yield b
    b.close()
    pw.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("DENSE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One server for the module: shapes-tiny-v2 over 3 drawn scenes (+ a broken and a huge file, an alias)."""
    from test_explore import make_folder

    import dense
    from dense.explore import Explorer, Server, create_app

    folder = make_folder(tmp_path_factory.mktemp("explore-browser"))
    explorer = Explorer(dense.load_encoder("shapes-tiny-v2", dtype="fp32"), folder)
    with Server(create_app(explorer)).start() as srv:
        yield srv, explorer


@pytest.fixture(scope="module")
def page(browser, site):
    server, _ = site
    p = browser.new_page(viewport={"width": 1280, "height": 900})
    p.goto(server.url)
    p.wait_for_selector("body[data-ready='1']", timeout=900_000)
    yield p
    p.close()


def wait_answer(page, mode: str) -> None:
    page.wait_for_selector(f"body[data-mode='{mode}'][data-busy='0']", timeout=900_000)


def data_url_rgb(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def good(explorer) -> list[str]:
    return [n for n in explorer.files if n not in ("broken.png", "huge.png")]


def card(page, name: str):
    return page.locator(f".card[data-name='{name}']")


def test_page_shows_the_images_at_their_aspect_ratios_and_bad_ones_as_messages(page, site, shots):
    _, explorer = site
    for name in good(explorer):
        assert card(page, name).get_attribute("data-state") == "ready"
        H, W = explorer.features(name).image_hw
        box = card(page, name).locator(".frame").bounding_box()
        assert box["width"] / box["height"] == pytest.approx(W / H, rel=0.02)
    assert card(page, "broken.png").get_attribute("data-state") == "error"
    assert card(page, "broken.png").locator(".error").text_content() == "broken.png: not an image PIL can read"
    assert "decompression bomb" in card(page, "huge.png").locator(".error").text_content()
    for name in good(explorer):  # one convention, labelled: rows x cols for pixels and patches alike
        (H, W), (gh, gw) = explorer.features(name).image_hw, explorer.features(name).grid_hw
        assert card(page, name).locator(".meta").text_content() == f"rows×cols: {H}×{W} px, {gh}×{gw} patches"
    from dense.features import pca_rgb_shared

    page.click("#show-pca")
    wait_answer(page, "pca")
    names = good(explorer)
    want = pca_rgb_shared([explorer.features(n) for n in names], sizes_hw=[explorer.view(n).shape[:2] for n in names])
    for name, rgb in zip(names, want, strict=True):  # every image coloured in the one basis of the images shown
        np.testing.assert_array_equal(data_url_rgb(card(page, name).locator("img.view").get_attribute("src")), rgb)
    assert page.locator("#pca-note").is_visible()
    assert f"one basis shared by the {len(names)} images shown" in page.locator("#pca-note").text_content()
    page.screenshot(path=str(shots / "explore-pca.png"), full_page=True)
    page.click("#show-image")


def test_click_a_patch_draws_the_similarity_the_api_gives(page, site, shots):
    from dense.similarity import similarity_maps
    from dense.viz import heat_overlay

    _, explorer = site
    names = good(explorer)
    source = names[1]
    frame = card(page, source).locator(".frame")
    box = frame.bounding_box()
    page.mouse.click(box["x"] + 0.55 * box["width"], box["y"] + 0.40 * box["height"])
    wait_answer(page, "similarity")
    page.screenshot(path=str(shots / "explore-similarity.png"), full_page=True)

    fmap = explorer.features(source)
    H, W = fmap.image_hw
    point_xy = [float(v) for v in card(page, source).get_attribute("data-point-xy").split(",")]
    assert point_xy == pytest.approx([0.55 * W, 0.40 * H], abs=W / box["width"] + 0.01)  # within a screen pixel
    sims = similarity_maps(fmap, point_xy, [explorer.features(n) for n in names])
    assert card(page, source).get_attribute("data-patch-ij") == ",".join(map(str, sims.patch_ij))
    for k, name in enumerate(names):
        c = card(page, name)
        assert c.get_attribute("data-peak-ij") == ",".join(map(str, sims.peak_ij[k]))
        assert float(c.get_attribute("data-peak-score")) == pytest.approx(sims.peak_scores[k], abs=1e-4)
        drawn = data_url_rgb(c.locator("img.view").get_attribute("src"))
        view = explorer.view(name)
        want = heat_overlay(view, sims.to_image(k, view.shape[:2]).numpy(), vmin=0.0, vmax=1.0)
        np.testing.assert_array_equal(drawn, want)  # the pixels shown are the API's map on the fixed 0..1 scale
    assert card(page, source).locator("svg .cell").count() == 1  # the clicked patch is outlined
    answer = explorer.similarity(source, point_xy, images=names)
    for k, (name, r) in enumerate(zip(names, answer["results"], strict=True)):  # rings where the API says so
        if name == source:
            continue
        c = card(page, name)
        assert c.get_attribute("data-ringed") == str(r["ringed"]).lower()
        assert c.locator("svg circle.peak").count() == int(r["ringed"])
        assert f"{sims.peak_scores[k]:.2f}" in c.locator(".result").text_content()  # the value, ringed or not
    assert "at least 0.5 and the way back agrees" in page.locator("#ring-note").text_content()


def test_query_and_expression_draw_heatmaps_and_boxes(page, site, shots):
    import dense
    from dense.heatmap import patch_scores

    _, explorer = site
    names = good(explorer)
    page.fill("#query", "red circle, blue star")
    page.click("#query-form button[type=submit]")
    wait_answer(page, "heatmap")
    assert page.locator("#tabs button").count() == 2
    page.screenshot(path=str(shots / "explore-heatmap.png"), full_page=True)
    for name in names:
        want = patch_scores(explorer.encoder, explorer.features(name), ["red circle"])[0]  # [gh, gw]
        assert float(card(page, name).get_attribute("data-max")) == pytest.approx(float(want.max()), abs=1e-4)
    page.click("#tabs button:nth-child(2)")
    name = names[0]
    want = patch_scores(explorer.encoder, explorer.features(name), ["blue star"])[0]
    assert float(card(page, name).get_attribute("data-max")) == pytest.approx(float(want.max()), abs=1e-4)

    page.fill("#expression", "the red circle")
    page.press("#expression", "Enter")
    wait_answer(page, "localize")
    page.screenshot(path=str(shots / "explore-localize.png"), full_page=True)
    for name in names:
        loc = dense.Localizer(explorer.encoder, explorer.features(name)).localize("the red circle")
        c = card(page, name)
        found = bool(getattr(loc, "found", True))
        assert c.get_attribute("data-found") == str(found).lower()
        if not found:
            assert "not found" in c.locator(".result").text_content()
            assert c.locator("svg .box").count() == 0
            continue
        rect = c.locator("svg rect.box")
        x, y, w, h = (float(rect.get_attribute(a)) for a in ("x", "y", "width", "height"))
        np.testing.assert_allclose([x, y, x + w, y + h], loc.box_xyxy, atol=0.01)
        assert c.locator("svg circle.point").count() == 1

    page.fill("#classes", "red circle, blue star, yellow triangle")
    page.click("#classes-form button[type=submit]")
    wait_answer(page, "segment")
    assert page.locator("#legend .swatch").count() == 4
    assert page.locator("#legend").text_content().endswith("background (unpainted)")
    page.screenshot(path=str(shots / "explore-segment.png"), full_page=True)
    present = set()
    for name in names:
        present |= set(filter(None, card(page, name).get_attribute("data-present").split("|")))
    assert present <= {"red circle", "blue star", "yellow triangle"} and present
