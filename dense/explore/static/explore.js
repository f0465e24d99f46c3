// dense explore: the page. Every answer comes from the server's JSON API (the library's own functions); this file only
// lays out cards, sends clicks and texts, and draws what comes back. Coordinates sent and received are in each
// image's original pixels (point_xy, box_xyxy); the page scales them to the displayed size.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const state = {
  listing: null,
  cards: new Map(),   // name -> {el, frame, img, marks, caption, info}
  mode: "image",      // image | pca | similarity | heatmap | localize | segment
  similarity: null,   // last answers, by kind
  pca: null,
  heatmap: null,
  query: 0,           // which query of the heatmap answer is shown
  localize: null,
  segment: null,
  busy: 0,
};

const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

function busy(delta) {
  state.busy += delta;
  document.body.dataset.busy = String(state.busy);
}

function imageUrl(name) {
  return "images/" + name.split("/").map(encodeURIComponent).join("/");
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = {error: `${res.status} ${res.statusText}`}; }
  if (!res.ok) throw new Error(data && data.error ? data.error : `${res.status} ${res.statusText}`);
  return data;
}

function readyNames() {
  return [...state.cards.entries()].filter(([, c]) => c.info).map(([n]) => n);
}

// --- cards ------------------------------------------------------------------------------------------------------------

function makeCard(name) {
  const el = document.createElement("figure");
  el.className = "card";
  el.dataset.name = name;
  el.dataset.state = "loading";
  const frame = document.createElement("div");
  frame.className = "frame";
  const img = document.createElement("img");
  img.className = "view";
  img.alt = name;
  img.draggable = false;
  const marks = document.createElementNS(SVG, "svg");
  marks.setAttribute("class", "marks");
  marks.setAttribute("preserveAspectRatio", "none");
  frame.append(img, marks);
  const caption = document.createElement("figcaption");
  caption.innerHTML = '<span class="name"></span> <span class="meta"></span><span class="result"></span>';
  caption.querySelector(".name").textContent = name;
  el.append(frame, caption);
  const card = {el, frame, img, marks, caption, info: null};
  frame.addEventListener("click", (e) => onClick(name, e));
  $("gallery").append(el);
  state.cards.set(name, card);
  return card;
}

async function loadCard(name) {
  const card = state.cards.get(name);
  try {
    const info = await api("api/image?name=" + encodeURIComponent(name));
    const [H, W] = info.image_hw;
    card.info = info;
    card.frame.style.aspectRatio = `${W} / ${H}`;
    card.marks.setAttribute("viewBox", `0 0 ${W} ${H}`);
    card.el.dataset.imageHw = `${H},${W}`;
    // one convention for both sizes: rows × cols (height × width), as the API's image_hw and grid_hw
    card.caption.querySelector(".meta").textContent =
      `rows×cols: ${H}×${W} px, ${info.grid_hw[0]}×${info.grid_hw[1]} patches`;
    card.el.dataset.state = "ready";
    render(name);
  } catch (err) {
    card.el.dataset.state = "error";
    card.img.remove();
    const msg = document.createElement("span");
    msg.className = "error";
    msg.textContent = err.message;
    card.frame.append(msg);
  }
}

function clearMarks(card) {
  while (card.marks.firstChild) card.marks.firstChild.remove();
}

function mark(card, tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  card.marks.append(el);
  return el;
}

function rect(card, xyxy, cls) {
  const [x0, y0, x1, y1] = xyxy;
  mark(card, "rect", {class: cls, x: x0, y: y0, width: Math.max(x1 - x0, 0), height: Math.max(y1 - y0, 0)});
}

function dot(card, xy, cls, fill) {
  const [H, W] = card.info.image_hw;
  const r = Math.max(H, W) * 0.018;
  mark(card, "circle", {class: cls, cx: xy[0], cy: xy[1], r: r, fill: fill || "none", stroke: "#fff",
                        "stroke-width": 2, "vector-effect": "non-scaling-stroke"});
}

function resultFor(answer, name) {
  return answer ? answer.results.find((r) => r.image === name) : undefined;
}

function setResult(card, text, cls = "") {
  const r = card.caption.querySelector(".result");
  r.textContent = text;
  r.className = "result " + cls;
}

// What one card shows in the current mode.
function render(name) {
  const card = state.cards.get(name);
  if (!card.info) return;
  const el = card.el;
  clearMarks(card);
  el.classList.remove("source");
  for (const k of ["peakIj", "peakScore", "ringed", "max", "boxXyxy", "pointXy", "patchIj", "found", "score",
                   "present"]) {
    delete el.dataset[k];
  }
  setResult(card, "");
  let src = imageUrl(name);
  if (state.mode === "pca") {
    const r = resultFor(state.pca, name);
    if (r) src = r.pca;
  } else if (state.mode === "similarity") {
    const s = state.similarity;
    const r = resultFor(s, name);
    if (r) {
      src = r.overlay;
      el.dataset.peakIj = r.peak_ij.join(",");
      el.dataset.peakScore = r.peak_score;
      el.dataset.ringed = String(r.ringed);
      if (s.image === name) {
        el.classList.add("source");
        el.dataset.pointXy = s.point_xy.join(",");
        el.dataset.patchIj = s.patch_ij.join(",");
        rect(card, s.patch_box_xyxy, "cell");
        setResult(card, "the clicked patch (outlined)");
      } else if (r.ringed) {  // a ring only where the match means something (see #ring-note)
        dot(card, r.peak_xy, "peak");
        setResult(card, `best match (ringed): cosine ${r.peak_score.toFixed(2)}`);
      } else {
        const why = r.consistent ? `below ${s.ring_min_cosine}` : "the way back disagrees";
        setResult(card, `no ring (${why}): best cosine ${r.peak_score.toFixed(2)}`, "nomatch");
      }
    }
  } else if (state.mode === "heatmap") {
    const r = resultFor(state.heatmap, name);
    if (r) {
      const m = r.maps[state.query];
      src = m.overlay;
      el.dataset.max = m.max;
      el.dataset.peakIj = m.peak_ij.join(",");
      setResult(card, `“${m.query}”: max ${m.max.toFixed(2)}`);
    }
  } else if (state.mode === "localize") {
    const r = resultFor(state.localize, name);
    if (r) {
      el.dataset.found = String(r.found);
      el.dataset.score = r.score;
      if (r.found) {
        el.dataset.boxXyxy = r.box_xyxy.join(",");
        el.dataset.pointXy = r.point_xy.join(",");
        rect(card, r.box_xyxy, "box");
        rect(card, r.box_xyxy, "box-inner");
        dot(card, r.point_xy, "point", "#e8112d");
        setResult(card, `score ${r.score.toFixed(2)}`);
      } else {
        setResult(card, `not found (score ${r.score.toFixed(2)})`, "notfound");
      }
    }
  } else if (state.mode === "segment") {
    const r = resultFor(state.segment, name);
    if (r) {
      src = r.overlay;
      el.dataset.present = r.present.join("|");
      setResult(card, r.present.length ? r.present.join(", ") : "background only");
    }
  }
  if (card.img.getAttribute("src") !== src) card.img.src = src;
  el.dataset.mode = state.mode;
}

function setMode(mode) {
  state.mode = mode;
  document.body.dataset.mode = mode;
  $("show-image").classList.toggle("active", mode === "image");
  $("show-pca").classList.toggle("active", mode === "pca");
  const scale = {similarity: "cosine similarity (below 0 drawn as 0)", heatmap: "probability"}[mode];
  $("scale").hidden = !scale;
  $("scale-label").textContent = scale || "";
  $("ring-note").hidden = mode !== "similarity";
  if (mode === "similarity" && state.similarity) {
    $("ring-note").textContent = `A ring marks an image's best patch where its cosine is at least ` +
      `${state.similarity.ring_min_cosine} and the way back agrees (that patch's own best match in the clicked ` +
      "image is at least as similar to the clicked patch). Every card shows its best cosine.";
  }
  $("pca-note").hidden = mode !== "pca";
  if (mode === "pca" && state.pca) {
    $("pca-note").textContent = `PCA colours: one basis shared by the ${state.pca.images.length} images shown, ` +
      "so a colour means the same in every image (the first three components as red, green, blue)";
  }
  $("tabs").hidden = mode !== "heatmap";
  $("legend").hidden = mode !== "segment";
  for (const name of state.cards.keys()) render(name);
}

// --- actions -----------------------------------------------------------------------------------------------------------

async function run(label, path, body, onAnswer) {
  busy(1);
  setStatus(`${label}…`);
  const t0 = performance.now();
  try {
    const answer = await api(path, body);
    onAnswer(answer);
    const ms = Math.round(performance.now() - t0);
    document.body.dataset.lastMs = String(ms);
    setStatus(`${label}: ${ms} ms`);
  } catch (err) {
    setStatus(`${label}: ${err.message}`, true);
  } finally {
    busy(-1);
  }
}

function onClick(name, e) {
  const card = state.cards.get(name);
  if (!card.info) return;
  const box = card.frame.getBoundingClientRect();
  const [H, W] = card.info.image_hw;
  const x = Math.min(Math.max((e.clientX - box.left) / box.width * W, 0), W);
  const y = Math.min(Math.max((e.clientY - box.top) / box.height * H, 0), H);
  const layer = Number($("layer").value);
  run("similarity", "api/similarity", {image: name, point_xy: [x, y], layer: layer, images: readyNames()}, (a) => {
    state.similarity = a;
    setMode("similarity");
  });
}

function splitList(text) {
  return text.split(",").map((t) => t.trim()).filter((t) => t.length);
}

function showTabs() {
  const tabs = $("tabs");
  tabs.replaceChildren();
  if (!state.heatmap || state.heatmap.queries.length < 2) return;
  state.heatmap.queries.forEach((q, k) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = q;
    b.classList.toggle("active", k === state.query);
    b.addEventListener("click", () => { state.query = k; showTabs(); setMode("heatmap"); });
    tabs.append(b);
  });
}

function showLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  for (const item of state.segment ? state.segment.legend : []) {
    const span = document.createElement("span");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = item.colour;
    span.append(sw, document.createTextNode(item.name));
    legend.append(span);
  }
}

function wire() {
  $("show-image").addEventListener("click", () => setMode("image"));
  $("show-pca").addEventListener("click", () => {
    const names = readyNames();
    if (state.pca && state.pca.images.join("\n") === names.join("\n")) return setMode("pca");
    run("PCA", "api/pca", {images: names}, (a) => {
      state.pca = a;
      setMode("pca");
    });
  });
  $("query-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const queries = splitList($("query").value);
    run("heatmaps", "api/heatmap", {queries: queries, images: readyNames()}, (a) => {
      state.heatmap = a;
      state.query = 0;
      showTabs();
      setMode("heatmap");
    });
  });
  $("expression-form").addEventListener("submit", (e) => {
    e.preventDefault();
    run("box and point", "api/localize", {expression: $("expression").value, images: readyNames()}, (a) => {
      state.localize = a;
      setMode("localize");
    });
  });
  $("classes-form").addEventListener("submit", (e) => {
    e.preventDefault();
    run("segmentation", "api/segment", {classes: splitList($("classes").value), images: readyNames()}, (a) => {
      state.segment = a;
      showLegend();
      setMode("segment");
    });
  });
}

async function main() {
  wire();
  busy(1);
  try {
    const listing = await api("api/images");
    state.listing = listing;
    $("model").textContent = listing.model;
    const more = listing.images.length < listing.total ? ` (the first ${listing.images.length} of ${listing.total})` : "";
    $("folder").textContent = `${listing.folder}: ${listing.images.length} images${more}`;
    const layer = $("layer");
    for (const b of listing.layers) {
      const opt = document.createElement("option");
      opt.value = b;
      opt.textContent = b === listing.layers[listing.layers.length - 1] ? `${b} (last)` : String(b);
      layer.append(opt);
    }
    layer.value = listing.layers[listing.layers.length - 1];
    if (!listing.images.length) setStatus("no images in this folder", true);
    for (const im of listing.images) makeCard(im.name);
    setStatus("extracting features…");
    const t0 = performance.now();
    const names = listing.images.map((im) => im.name);
    for (let k = 0; k < names.length; k += listing.batch_size) {  // extracted together, a batch per request
      const chunk = names.slice(k, k + listing.batch_size);
      setStatus(`extracting features… ${k}/${names.length}`);
      await api("api/prepare", {images: chunk});
      for (const name of chunk) await loadCard(name);
    }
    setStatus(`ready: ${readyNames().length} images in ${Math.round(performance.now() - t0)} ms`);
    setMode(state.mode);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    busy(-1);
    document.body.dataset.ready = "1";
  }
}

main();
