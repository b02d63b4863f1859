// Embedding map: the 2-D projection drawn as SVG; hover for a thumbnail, drag (or a legend entry) to select.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const W = 1000, H = 700, PAD = 24;
let points = [], selected = new Set(), legend = {};

const $ = (id) => document.getElementById(id);
const px = (p) => PAD + p.x * (W - 2 * PAD);
const py = (p) => H - PAD - p.y * (H - 2 * PAD);

function svgPoint(svg, event) {
  const pt = svg.createSVGPoint();
  pt.x = event.clientX; pt.y = event.clientY;
  return pt.matrixTransform(svg.getScreenCTM().inverse());
}

function draw() {
  const svg = $("emb-svg");
  const circles = points.map((p, i) => {
    const c = document.createElementNS(NS, "circle");
    c.setAttribute("cx", px(p).toFixed(1));
    c.setAttribute("cy", py(p).toFixed(1));
    c.setAttribute("r", points.length > 2000 ? 2.6 : 4);
    c.setAttribute("fill", p.colour || legend[p.value] || "#888");  // a land-cover share: its own colour
    c.dataset.index = i;
    return c;
  });
  const brush = document.createElementNS(NS, "rect");
  brush.id = "emb-brush";
  brush.setAttribute("fill", "rgba(230,159,0,.15)");
  brush.setAttribute("stroke", "#E69F00");
  brush.setAttribute("visibility", "hidden");
  svg.replaceChildren(...circles, brush);
}

function matches(p, text) {
  if (!text) return true;
  const hay = [p.name, p.taxonomy, p.value, p.licence, p.id].join(" ").toLowerCase();
  return hay.includes(text.toLowerCase());
}

function visibleSelection() {
  const text = $("sel-filter").value.trim();
  return [...selected].map((i) => points[i]).filter((p) => matches(p, text));
}

function refresh() {
  const text = $("sel-filter").value.trim();
  for (const c of $("emb-svg").querySelectorAll("circle")) {
    const i = Number(c.dataset.index);
    const on = selected.has(i) && matches(points[i], text);
    c.classList.toggle("sel", on);
    c.classList.toggle("dim", selected.size > 0 && !on);
  }
  const shown = visibleSelection();
  $("sel-count").textContent = selected.size ? `${shown.length} of ${selected.size} selected` : "none";
  for (const id of ["sel-export", "sel-like", "sel-clear"]) $(id).disabled = shown.length === 0 && id !== "sel-clear";
  $("sel-clear").disabled = selected.size === 0;
  $("sel-list").replaceChildren(...shown.slice(0, 200).map((p) => {
    const li = document.createElement("li");
    const a = Object.assign(document.createElement("a"), { href: "/search?id=" + p.id, textContent: p.name || p.id.slice(0, 12) });
    li.append(a, document.createTextNode(" " + p.value));
    return li;
  }));
  for (const b of $("emb-legend").querySelectorAll("button")) {
    const members = points.map((p, i) => [p, i]).filter(([p]) => p.value === b.dataset.value);
    b.setAttribute("aria-pressed", String(members.length > 0 && members.every(([, i]) => selected.has(i))));
  }
}

function buildLegend(counts) {
  $("emb-legend").replaceChildren(...Object.entries(legend).map(([value, colour]) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.value = value;
    b.setAttribute("aria-pressed", "false");
    b.title = "select every point of " + value;
    b.innerHTML = `<svg width="12" height="12" aria-hidden="true"><circle cx="6" cy="6" r="5" fill="${colour}"/></svg>`;
    b.append(document.createTextNode(`${value} (${counts[value]})`));
    b.addEventListener("click", () => {
      const members = points.map((p, i) => [p, i]).filter(([p]) => p.value === value).map(([, i]) => i);
      const all = members.every((i) => selected.has(i));
      for (const i of members) all ? selected.delete(i) : selected.add(i);
      refresh();
    });
    li.append(b);
    return li;
  }));
}

function wireBrush() {
  const svg = $("emb-svg");
  const tip = $("emb-tip");
  let start = null;
  svg.addEventListener("pointerdown", (e) => { start = svgPoint(svg, e); svg.setPointerCapture(e.pointerId); });
  svg.addEventListener("pointermove", (e) => {
    const brush = $("emb-brush");
    if (start) {
      const at = svgPoint(svg, e);
      brush.setAttribute("x", Math.min(start.x, at.x)); brush.setAttribute("y", Math.min(start.y, at.y));
      brush.setAttribute("width", Math.abs(at.x - start.x)); brush.setAttribute("height", Math.abs(at.y - start.y));
      brush.setAttribute("visibility", "visible");
      tip.hidden = true;
      return;
    }
    const circle = e.target.closest("circle");
    if (!circle) { tip.hidden = true; return; }
    const p = points[Number(circle.dataset.index)];
    tip.querySelector("img").src = p.thumb;
    tip.querySelector("span").textContent = `${p.name || p.id.slice(0, 12)} — ${p.share === undefined ? p.value : p.share === null ? "no data" : p.share.toFixed(3)}`;
    const box = svg.parentElement.getBoundingClientRect();
    tip.style.left = Math.min(e.clientX - box.left + 14, box.width - 190) + "px";
    tip.style.top = (e.clientY - box.top + 14) + "px";
    tip.hidden = false;
  });
  svg.addEventListener("pointerleave", () => { tip.hidden = true; });
  svg.addEventListener("pointerup", (e) => {
    if (!start) return;
    const at = svgPoint(svg, e);
    const [x0, x1] = [Math.min(start.x, at.x), Math.max(start.x, at.x)];
    const [y0, y1] = [Math.min(start.y, at.y), Math.max(start.y, at.y)];
    start = null;
    $("emb-brush").setAttribute("visibility", "hidden");
    if (x1 - x0 < 3 && y1 - y0 < 3) {  // a click: the point under it
      const circle = e.target.closest("circle");
      if (circle) { const i = Number(circle.dataset.index); selected.has(i) ? selected.delete(i) : selected.add(i); }
    } else {
      if (!e.shiftKey) selected.clear();
      points.forEach((p, i) => { if (px(p) >= x0 && px(p) <= x1 && py(p) >= y0 && py(p) <= y1) selected.add(i); });
    }
    refresh();
  });
  // Keyboard: Escape clears, A selects everything drawn.
  svg.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { selected.clear(); refresh(); }
    if (e.key === "a" || e.key === "A") { points.forEach((_, i) => selected.add(i)); refresh(); }
  });
}

function exportCsv() {
  const rows = visibleSelection();
  const quote = (v) => `"${String(v ?? "").replaceAll('"', '""')}"`;
  const header = ["image_id", "x", "y", "value", "share", "name", "taxonomy", "licence", "url"];
  const lines = [header.join(","), ...rows.map((p) => [p.id, p.x, p.y, p.value, p.share, p.name, p.taxonomy, p.licence, p.url].map(quote).join(","))];
  const link = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" })),
    download: "embedding-selection.csv",
  });
  document.body.append(link);
  link.click();
  link.remove();
}

async function load() {
  const params = new URLSearchParams(window.location.search);
  showLoading("Projecting the embeddings…");
  try {
    const answer = await fetch("/api/embeddings?" + params.toString());
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.error || answer.statusText);
    points = body.points;
    legend = body.legend;
    const explained = body.explained.length ? ` · PC1 ${(100 * body.explained[0]).toFixed(1)}%, PC2 ${(100 * body.explained[1]).toFixed(1)}% of the variance` : "";
    $("emb-summary").textContent = `${body.total.toLocaleString("en")} images · ${body.method.toUpperCase()}${explained}`;
    if (!points.length) $("emb-summary").textContent = "No embeddings stored yet: ingest a URL list first.";
    $("emb-scale").hidden = !(body.scale && body.scale.length);
    draw();
    buildLegend(body.counts || {});
    refresh();
  } catch (error) {
    const box = Object.assign(document.createElement("div"), { className: "error", role: "alert" });
    box.textContent = "Could not draw the map: " + error.message;
    document.getElementById("main").prepend(box);
  } finally {
    hideLoading();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  wireBrush();
  $("sel-filter").addEventListener("input", refresh);
  $("sel-clear").addEventListener("click", () => { selected.clear(); refresh(); });
  $("sel-export").addEventListener("click", exportCsv);
  $("sel-like").addEventListener("click", () => {
    const first = visibleSelection()[0];
    if (first) window.location.assign("/search?id=" + first.id);
  });
  load();
});
