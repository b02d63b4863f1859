// Jobs: live progress by polling the portal's JSON (every 2 s while any job on the page runs).
"use strict";

const POLL_MS = 2000;

function fill(root, job) {
  const set = (field, text) => { for (const el of root.querySelectorAll(`[data-field="${field}"]`)) el.textContent = text; };
  for (const el of root.querySelectorAll('[data-field="progress"]')) { el.max = job.total || 1; el.value = job.finished; }
  set("percent", job.percent.toFixed(1) + "%");
  for (const key of ["indexed", "duplicate", "failed", "finished", "total"]) set(key, job[key].toLocaleString("en"));
  for (const el of root.querySelectorAll('[data-field="state"]')) { el.textContent = job.state; el.className = "state " + job.state; }
  root.dataset.state = job.state;
}

function addRow(table, job) {
  const row = document.createElement("tr");
  row.dataset.job = job.job_id;
  const cell = (tag, field, cls) => {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    if (field) el.dataset.field = field;
    row.append(el);
    return el;
  };
  const head = cell("th");
  head.scope = "row";
  head.append(Object.assign(document.createElement("a"), { href: "/jobs/" + encodeURIComponent(job.job_id), textContent: job.job_id }));
  cell("td").textContent = job.created;
  cell("td").append(Object.assign(document.createElement("span"), { className: "state", textContent: job.state }));
  row.lastChild.firstChild.dataset.field = "state";
  const progress = cell("td", null, "progresscol");
  const bar = document.createElement("progress");
  bar.dataset.field = "progress";
  const percent = document.createElement("span");
  percent.dataset.field = "percent";
  progress.append(bar, " ", percent);
  for (const key of ["indexed", "duplicate", "failed"]) cell("td", key, "num");
  cell("td").textContent = job.source;
  table.tBodies[0].prepend(row);
  return row;
}

async function pollList(table) {
  try {
    const answer = await fetch("/api/jobs", { cache: "no-store" });
    if (!answer.ok) throw new Error((await answer.json()).error);
    const { jobs } = await answer.json();
    // New jobs get a row at the top; the page is never reloaded, so a half-filled form above survives.
    for (const job of [...jobs].reverse()) {
      const row = table.querySelector(`tr[data-job="${CSS.escape(job.job_id)}"]`) || addRow(table, job);
      fill(row, job);
    }
    document.getElementById("jobs-updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    document.getElementById("jobs-updated").textContent = "could not refresh: " + error.message;
  }
  setTimeout(() => pollList(table), POLL_MS);
}

async function pollJob(section) {
  const id = section.dataset.job;
  try {
    const answer = await fetch("/api/jobs/" + encodeURIComponent(id), { cache: "no-store" });
    if (answer.ok) {
      const job = await answer.json();
      const wasRunning = section.dataset.state === "running";
      fill(section, job);
      // Finished: reload once so failures, examples and buttons match the end state.
      if (wasRunning && job.state !== "running") { window.location.reload(); return; }
    }
  } catch (_) { /* try again next tick */ }
  if (section.dataset.state === "running") setTimeout(() => pollJob(section), POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("jobs-table");
  if (table) setTimeout(() => pollList(table), POLL_MS);
  const section = document.getElementById("job");
  if (section && section.dataset.state === "running") setTimeout(() => pollJob(section), POLL_MS);
});
