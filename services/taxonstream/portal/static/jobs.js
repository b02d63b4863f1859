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

async function pollList(table) {
  try {
    const answer = await fetch("/api/jobs", { cache: "no-store" });
    if (!answer.ok) throw new Error((await answer.json()).error);
    const { jobs } = await answer.json();
    const known = new Set([...table.querySelectorAll("tr[data-job]")].map((r) => r.dataset.job));
    if (jobs.some((j) => !known.has(j.job_id))) { window.location.reload(); return; }  // a new job: redraw
    for (const job of jobs) {
      const row = table.querySelector(`tr[data-job="${CSS.escape(job.job_id)}"]`);
      if (row) fill(row, job);
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
