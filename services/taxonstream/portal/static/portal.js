// taxonstream explorer: the shared behaviour of every page (no framework, nothing fetched from elsewhere).
"use strict";

function showLoading(text) {
  const box = document.getElementById("loading");
  if (!box) return;
  document.getElementById("loading-text").textContent = text || "Working…";
  box.hidden = false;
}

function hideLoading() {
  const box = document.getElementById("loading");
  if (box) box.hidden = true;
}

// Forms say what they are doing while the page waits (data-loading), and ask first when data-confirm says so.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  if (form.dataset.loading) {
    showLoading(form.dataset.loading);
    for (const button of form.querySelectorAll("button[type=submit]")) button.disabled = true;
  }
});
// Back/forward restores a page from the cache with its spinner still showing.
window.addEventListener("pageshow", () => {
  hideLoading();
  for (const button of document.querySelectorAll("form[data-loading] button[type=submit]")) button.disabled = false;
});

// A drop zone: drag a file onto it, or focus its file input and press Enter/Space.
function wireDropzone() {
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("image-input");
  const name = document.getElementById("drop-name");
  if (!zone || !input) return;
  const show = () => { name.textContent = input.files.length ? input.files[0].name : ""; };
  input.addEventListener("change", show);
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      show();
    }
  });
}

// The image search keeps the filters of the text form: they travel in the address, the image in the body.
function wireImageSearch() {
  const imageForm = document.getElementById("image-form");
  const textForm = document.getElementById("search-form");
  if (!imageForm || !textForm) return;
  imageForm.addEventListener("submit", () => {
    const params = new URLSearchParams();
    for (const [key, value] of new FormData(textForm)) {
      if (key !== "text" && key !== "id" && String(value).trim()) params.append(key, value);
    }
    imageForm.action = "/search?" + params.toString();
  }, true);
}

// Classify by image id without a file: a GET, so the address can be shared.
function wireClassify() {
  const form = document.getElementById("classify-form");
  if (!form) return;
  form.addEventListener("submit", (event) => {
    const file = form.querySelector("input[type=file]");
    const id = form.querySelector("input[name=id]").value.trim();
    if (file.files.length || !id) return;
    event.preventDefault();
    const params = new URLSearchParams();
    for (const key of ["id", "rank", "bank", "labels"]) {
      const value = String(form.elements[key].value || "").trim();
      if (value) params.append(key, value);
    }
    showLoading(form.dataset.loading);
    window.location.assign("/classify?" + params.toString());
  }, true);
}

// Facet values for the filter fields, from the index's own counts (a hint, not a limit).
async function loadFacets() {
  if (!document.getElementById("values-genus")) return;
  try {
    const answer = await fetch("/api/facets");
    if (!answer.ok) return;
    const facets = await answer.json();
    for (const [field, values] of Object.entries(facets)) {
      const list = document.getElementById("values-" + field);
      if (!list) continue;
      list.replaceChildren(...values.map((v) => Object.assign(document.createElement("option"), { value: v })));
    }
  } catch (_) { /* the fields still take any value */ }
}

async function loadHealth() {
  const strip = document.getElementById("health");
  if (!strip) return;
  try {
    const answer = await fetch("/api/health");
    const health = await answer.json();
    strip.replaceChildren(...Object.entries(health).map(([service, up]) => {
      const item = document.createElement("li");
      item.className = up ? "up" : "down";
      item.textContent = service;
      item.title = service + (up ? " is serving" : " is not reachable");
      return item;
    }));
  } catch (_) {
    strip.replaceChildren(Object.assign(document.createElement("li"), { className: "down", textContent: "portal" }));
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  navigator.clipboard?.writeText(button.dataset.copy).then(() => {
    const before = button.textContent;
    button.textContent = "copied";
    setTimeout(() => { button.textContent = before; }, 1200);
  });
});

document.addEventListener("DOMContentLoaded", () => {
  wireDropzone();
  wireImageSearch();
  wireClassify();
  loadFacets();
  loadHealth();
});
