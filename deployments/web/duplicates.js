// Near-duplicate review: GET /api/v1/duplicates (202 while the scan runs), DELETE the chosen;
// through api.js (loaded first).
"use strict";

const PAGE = 10;
let offset = 0;
let total = 0;

function showError(message) {
  $("message").textContent = message;
  $("message").hidden = !message;
}

function headers() {
  const key = $("key").value.trim();
  sessionStorage.setItem("lookalike-key", key);
  return key ? { "X-API-Key": key } : {};
}

async function load(refresh = false) {
  showError("");
  const p = new URLSearchParams({ offset, limit: PAGE });
  const threshold = $("threshold").value.trim();
  if (threshold) p.set("threshold", threshold);
  if (refresh) p.set("refresh", "true");
  document.body.classList.add("busy");
  try {
    for (;;) {
      const { status, body } = await request(api(`api/v1/duplicates?${p}`), { headers: headers() });
      if (status !== 202) { render(body); break; }
      const g = body.progress || {};
      $("progress").textContent = `Scanning: ${(g.done || 0).toLocaleString("en")} of ` +
        `${(g.total || 0).toLocaleString("en")} images…`;
      p.delete("refresh");  // poll the scan that runs
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  } catch (e) {
    showError(e.message);
  } finally {
    document.body.classList.remove("busy");
  }
}

function render(body) {
  total = body.groups;
  if (!$("threshold").value) $("threshold").value = body.threshold;
  $("progress").textContent = `Scanned ${body.images.toLocaleString("en")} images in ${body.seconds} s.`;
  $("summary").textContent = body.groups
    ? `${body.groups} groups, ${body.duplicates} images that could go; groups ${offset + 1}–` +
      `${Math.min(offset + PAGE, body.groups)}, largest first.`
    : `No near-duplicates at similarity ${body.threshold} or more.`;
  const list = $("groups");
  list.replaceChildren();
  body.items.forEach((group, g) => {
    const item = $("group").content.firstElementChild.cloneNode(true);
    item.querySelector(".group-head").textContent =
      `Group ${offset + g + 1}: ${group.size} images, closest pair ${group.top_score.toFixed(3)}`;
    const grid = item.querySelector(".grid");
    group.images.forEach((image, i) => {
      const card = $("member").content.firstElementChild.cloneNode(true);
      card.dataset.id = image.id;
      card.querySelector("a").href = image.url;
      card.querySelector("img").src = image.url;
      card.querySelector("img").alt = `${image.label || "image"} ${i + 1} of group ${offset + g + 1}`;
      card.querySelector(".label").textContent = image.label || "—";
      card.querySelector(".score").textContent = `score ${image.score.toFixed(3)}`;
      card.querySelector(".source").textContent = image.source;
      const box = card.querySelector("input");
      box.setAttribute("aria-label", `Delete ${image.label || "image"} ${i + 1} of group ${offset + g + 1}`);
      box.addEventListener("change", updateButtons);
      grid.appendChild(card);
    });
    list.appendChild(item);
  });
  updateButtons();
}

function chosen() {
  return [...document.querySelectorAll("#groups .card")].filter((c) => c.querySelector("input").checked);
}

function updateButtons() {
  const n = chosen().length;
  $("delete").disabled = n === 0;
  $("delete").textContent = n ? `Delete ${n} selected` : "Delete selected";
  $("prev").disabled = offset === 0;
  $("next").disabled = offset + PAGE >= total;
}

async function deleteChosen() {
  const cards = chosen();
  if (!cards.length || !confirm(`Delete ${cards.length} image(s) from the library? This cannot be undone.`)) return;
  showError("");
  for (const card of cards) {
    try {
      await request(api(`api/v1/images/${encodeURIComponent(card.dataset.id)}`),
                    { method: "DELETE", headers: headers() });
      card.remove();
    } catch (e) {
      showError(`Could not delete: ${e.message}`);
      break;
    }
  }
  await load();  // the groups without the deleted images
}

function init() {
  $("key").value = sessionStorage.getItem("lookalike-key") || "";
  $("scan-form").addEventListener("submit", (e) => { e.preventDefault(); offset = 0; load(true); });
  $("delete").addEventListener("click", deleteChosen);
  $("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); load(); });
  $("next").addEventListener("click", () => { offset += PAGE; load(); });
  document.body.dataset.ready = "true";
  load();
}

document.addEventListener("DOMContentLoaded", init);
