// Lookalike's page: no build step, no dependencies. Talks to the /api/v1 routes next to it
// through api.js (loaded first).
"use strict";

const MAX_SIDE = 600;          // big photos are downscaled in the browser before upload
const MAX_UPLOAD = 2 * 1024 * 1024;

let lastQuery = null;          // re-run when K or the label filter changes
let runs = 0;                  // only the latest search's answer is shown
let lastUpload = null;         // the uploaded image, for searches by a part of it
let region = null;             // {x, y, w, h} as fractions of the image, or null: the whole image
const REGION_MIN = 0.05;       // the smallest box side, as a fraction of the image's side

// -- errors ----------------------------------------------------------------------------------
function showError(err) {
  const box = $("message");
  box.textContent = err.message;
  box.hidden = false;
}

function clearError() {
  $("message").hidden = true;
  $("message").textContent = "";
}

// -- queries ------------------------------------------------------------------------------
function params(query) {
  const p = new URLSearchParams({ k: $("k").value });
  const label = $("filter").value.trim();
  if (label) p.set("filter", label);
  if (query && query.box) p.set("box", query.box);
  return p;
}

async function run(query) {
  lastQuery = query;
  const mine = ++runs;
  clearError();
  document.body.classList.add("busy");
  try {
    let body;
    if (query.kind === "similar") {
      body = await call(api(`api/v1/images/${encodeURIComponent(query.id)}/similar?${params()}`));
    } else {
      const form = new FormData();
      if (query.kind === "file") form.append("image", query.blob, query.name);
      else if (query.kind === "text") form.append("text", query.text);
      else form.append("url", query.url);
      body = await call(api(`api/v1/search?${params(query)}`), { method: "POST", body: form });
    }
    if (mine !== runs) return;  // a later search was started meanwhile: its answer counts
    render(body, query);
  } catch (e) {
    if (mine === runs) showError(e);
  } finally {
    // The panel follows every search, a failed one above all (a backend down shows at once).
    if (mine === runs) { document.body.classList.remove("busy"); refreshStatus(); }
  }
}

// Downscale big photos (longest side MAX_SIDE, JPEG) on a white background — the server
// composites transparency on white too — so uploads stay small without changing results.
async function prepareUpload(file) {
  if (!file.type.startsWith("image/") || file.type === "image/gif") return file;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (_) {
    return file;  // let the server explain what is wrong with it
  }
  const scale = MAX_SIDE / Math.max(bitmap.width, bitmap.height);
  if (scale >= 1 && file.size <= MAX_UPLOAD) { bitmap.close(); return file; }
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * Math.min(scale, 1)));
  canvas.height = Math.max(1, Math.round(bitmap.height * Math.min(scale, 1)));
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
  return blob || file;
}

async function searchFile(file) {
  if (!file) return;
  const preview = $("preview");
  if (file.type.startsWith("image/")) {
    if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.alt = `Your image: ${file.name || "pasted image"}`;
    preview.hidden = false;
  } else {
    preview.hidden = true;
  }
  const blob = await prepareUpload(file);
  lastUpload = { kind: "file", blob, name: file.name || "pasted.png", title: file.name || "your image" };
  showRegion(blob);
  await run(lastUpload);
}

// -- a part of the image: drag a box (mouse, pen, touch), or move it with the keyboard --------
function boxText(r) {
  return [r.x, r.y, r.w, r.h].map((v) => v.toFixed(4)).join(",");  // fractions: the API's relative box
}

function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }

function setRegion(r) {
  region = r;
  const box = $("region-box");
  box.hidden = !r;
  $("region-search").disabled = !r;
  $("region-clear").disabled = !r;
  if (!r) { $("region-text").textContent = ""; return; }
  Object.assign(box.style, { left: `${r.x * 100}%`, top: `${r.y * 100}%`, width: `${r.w * 100}%`,
                             height: `${r.h * 100}%` });
  const pct = (v) => Math.round(v * 100);
  $("region-text").textContent =
    `part: ${pct(r.w)}% × ${pct(r.h)}% of the image, from ${pct(r.x)}%, ${pct(r.y)}%`;
}

function showRegion(blob) {
  const img = $("region-img");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.alt = "Your image: drag on it to choose a part";
  $("region").hidden = false;
  setRegion(null);
}

function searchRegion() {
  if (!lastUpload) return;
  const box = region ? boxText(region) : null;
  run({ ...lastUpload, box, title: box ? `a part of ${lastUpload.title}` : lastUpload.title });
}

function initRegion() {
  const area = $("region-area");
  let start = null;
  const at = (e) => {
    const rect = $("region-img").getBoundingClientRect();
    return { x: clamp((e.clientX - rect.left) / rect.width, 0, 1), y: clamp((e.clientY - rect.top) / rect.height, 0, 1) };
  };
  const between = (a, b) => ({ x: Math.min(a.x, b.x), y: Math.min(a.y, b.y),
                               w: Math.abs(a.x - b.x), h: Math.abs(a.y - b.y) });
  area.addEventListener("pointerdown", (e) => {
    if (!lastUpload) return;
    e.preventDefault();
    area.setPointerCapture(e.pointerId);
    start = at(e);
  });
  area.addEventListener("pointermove", (e) => {
    if (start) setRegion(between(start, at(e)));
  });
  const finish = (e) => {
    if (!start) return;
    const r = between(start, at(e));
    start = null;
    if (r.w >= REGION_MIN && r.h >= REGION_MIN) {
      setRegion(r);
      $("region-box").focus();
      searchRegion();
    } else {
      setRegion(region && region.w >= REGION_MIN ? region : null);
    }
  };
  area.addEventListener("pointerup", finish);
  area.addEventListener("pointercancel", () => { start = null; });
  $("region-box").addEventListener("keydown", (e) => {
    if (!region) return;
    const step = e.altKey ? 0.01 : 0.05;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (e.key === "Enter") { e.preventDefault(); searchRegion(); return; }
    if (e.key === "Escape") { e.preventDefault(); setRegion(null); return; }
    if (!(e.key in moves)) return;
    e.preventDefault();
    const [dx, dy] = moves[e.key];
    let { x, y, w, h } = region;
    if (e.shiftKey) {  // resize from the bottom-right corner
      w = clamp(w + dx, REGION_MIN, 1 - x);
      h = clamp(h + dy, REGION_MIN, 1 - y);
    } else {
      x = clamp(x + dx, 0, 1 - w);
      y = clamp(y + dy, 0, 1 - h);
    }
    setRegion({ x, y, w, h });
  });
  $("region-start").addEventListener("click", () => {  // a box to move and resize by keyboard
    setRegion(region || { x: 0.25, y: 0.25, w: 0.5, h: 0.5 });
    $("region-box").focus();
  });
  $("region-search").addEventListener("click", searchRegion);
  $("region-clear").addEventListener("click", () => { setRegion(null); searchRegion(); });
}

// -- rendering ----------------------------------------------------------------------------
function render(body, query) {
  const list = $("results");
  list.replaceChildren();
  const results = body.results || [];
  $("results-title").textContent = query.kind === "similar"
    ? `More like ${query.title}` : `Results for ${query.title}`;
  $("empty").hidden = results.length > 0;
  $("empty").textContent = results.length ? "" : "No matches (try another label filter or a lower K).";
  const template = $("card");
  results.forEach((hit, i) => {
    const card = template.content.firstElementChild.cloneNode(true);
    if (i === 0) card.classList.add("first");
    card.dataset.id = hit.id;
    const link = card.querySelector("a");
    link.href = hit.url;
    link.setAttribute("aria-label", `Open ${hit.label || "image"} (match ${i + 1}) full size`);
    const img = card.querySelector("img");
    img.src = hit.url;
    img.alt = hit.label ? `${hit.label} (match ${i + 1})` : `match ${i + 1}`;
    card.querySelector(".label").textContent = hit.label || "—";
    card.querySelector(".score").textContent =
      `score ${hit.score.toFixed(3)} · distance ${hit.distance.toFixed(3)}` + (hit.region ? " · a part matched" : "");
    if (hit.region) outlineMatch(card, img, hit.region);
    const button = card.querySelector(".similar");
    button.setAttribute("aria-label", `More like match ${i + 1}${hit.label ? " (" + hit.label + ")" : ""}`);
    button.addEventListener("click", () =>
      run({ kind: "similar", id: hit.id, title: hit.label ? `this ${hit.label}` : "this image" }));
    list.appendChild(card);
  });
  const t = body.timings || {};
  // A step that did not run (no fetch for an upload) is absent or null: not shown.
  $("timings").textContent = ["fetch", "decode", "embed", "search"]
    .filter((step) => t[`${step}_ms`] != null)
    .map((step) => `${step} ${t[`${step}_ms`]} ms`)
    .join(" · ");
}

// The part of a result that matched its query (x,y,w,h as fractions of the picture), outlined
// on the picture as its thumbnail shows it (contained in the image box, centred), and placed
// again whenever that box changes size.
function outlineMatch(card, img, region) {
  const [x, y, w, h] = region.split(",").map(Number);
  const box = card.querySelector(".matched");
  box.title = "the part that matched";
  const place = () => {
    if (!img.naturalWidth) return;
    const ratio = img.naturalWidth / img.naturalHeight;
    const pw = Math.min(img.offsetWidth, img.offsetHeight * ratio), ph = pw / ratio;
    const left = img.offsetLeft + (img.offsetWidth - pw) / 2, top = img.offsetTop + (img.offsetHeight - ph) / 2;
    Object.assign(box.style, { left: `${left + x * pw}px`, top: `${top + y * ph}px`,
                               width: `${w * pw}px`, height: `${h * ph}px` });
    box.hidden = false;
  };
  img.addEventListener("load", place, { once: true });
  new ResizeObserver(place).observe(img);
}

async function refreshStatus() {
  try {
    const s = await call(api("api/v1/status"));
    $("status-count").textContent = s.count === null || s.count === undefined ? "?" : s.count.toLocaleString("en");
    $("status-count").dataset.count = s.count ?? "";
    const m = s.model || {};
    $("status-model").textContent = m.name
      ? `${m.name} · ${s.dimension}-d · ${m.device || "?"}/${m.runtime || "?"}/${m.precision || "?"}` : "unavailable";
    $("text-form").hidden = !m.text;  // words only where the model has a text tower
    const ix = s.index || {};
    const ixParams = Object.entries(ix.params || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    $("status-index").textContent = ix.type ? `${ix.type} (${ix.metric}${ixParams ? ", " + ixParams : ""})` : "—";
    const health = $("status-health");
    health.replaceChildren();
    for (const [name, part] of [["milvus", s.milvus], ["store", s.store], ["model", s.model]]) {
      const span = document.createElement("span");
      const up = part && part.healthy;
      span.className = "health" + (up ? "" : " down");
      span.textContent = `${name} ${up ? "up" : "down"}`;
      if (!up && part && part.error) span.title = part.error;
      health.appendChild(span);
    }
    const warning = (s.milvus && s.milvus.warning) || "";
    $("status-warning").textContent = warning;
    $("status-warning").hidden = !warning;
  } catch (e) {
    $("status-health").textContent = e.message;
  }
}

// -- input: click, keyboard, drag and drop, paste, URL, words -----------------------------------
function init() {
  const drop = $("drop");
  const file = $("file");
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); }
  });
  file.addEventListener("change", () => { searchFile(file.files[0]); file.value = ""; });
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const dropped = e.dataTransfer && e.dataTransfer.files[0];
    if (dropped) searchFile(dropped);
    else showError(new Error("Drop an image file (not a link or text)."));
  });
  document.addEventListener("paste", (e) => {
    const items = Array.from((e.clipboardData && e.clipboardData.items) || []);
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (!item) return;  // ordinary text pastes into inputs go on as usual
    e.preventDefault();
    searchFile(item.getAsFile());
  });
  initRegion();
  $("url-form").addEventListener("submit", (e) => {
    e.preventDefault();
    lastUpload = null;
    $("region").hidden = true;
    const url = $("url").value.trim();
    if (url) run({ kind: "url", url, title: url.split("/").pop() || url });
  });
  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    lastUpload = null;
    $("region").hidden = true;
    const text = $("text").value.trim();
    if (text) run({ kind: "text", text, title: `“${text}”` });
  });
  const rerun = () => { if (lastQuery) run(lastQuery); };
  $("k").addEventListener("change", rerun);
  $("filter").addEventListener("change", rerun);
  refreshStatus();
  setInterval(refreshStatus, 30000);
  document.body.dataset.ready = "true";  // handlers are attached
}

document.addEventListener("DOMContentLoaded", init);
