// faceledger web UI: small behaviours shared by every page (no framework, no build step).
"use strict";

window.faceledger = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  // Calls the API with the session cookie and the CSRF header; errors carry the API's code.
  async function api(path, options = {}) {
    const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
    if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = csrf();
    const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options, { headers }));
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = { code: "bad-response", message: `${response.status} ${response.statusText}` };
    }
    if (response.status === 401) {
      window.location.href = "/login?next=" + encodeURIComponent(window.location.pathname);
    }
    if (!response.ok) {
      const err = new Error(body.message || response.statusText);
      err.code = body.code;
      err.status = response.status;
      err.fields = Array.isArray(body.fields) ? body.fields : [];
      err.body = body;
      throw err;
    }
    return body;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Numbers as the pages show them (the same as the templates' rate and count filters).
  const SUPERSCRIPT = { "-": "⁻", 0: "⁰", 1: "¹", 2: "²", 3: "³", 4: "⁴", 5: "⁵", 6: "⁶", 7: "⁷", 8: "⁸", 9: "⁹" };
  function sci(x) {
    const [m, e] = x.toExponential(1).split("e");
    return `${m}×10${[...String(Number(e))].map((ch) => SUPERSCRIPT[ch]).join("")}`;
  }
  function fmtRate(x) {
    if (x === null || x === undefined) return "n/a";
    if (x === 0) return "0";
    return x >= 0.01 ? x.toFixed(3) : sci(x);
  }
  function fmtCount(x) {
    if (x === null || x === undefined) return "n/a";
    if (x >= 10) return x.toFixed(0);
    if (x >= 0.01) return x.toFixed(2);
    return x === 0 ? "0" : sci(x);
  }
  function fmtScore(x) {
    return x === null || x === undefined ? "n/a" : x.toFixed(3);
  }

  // The inputs ``fields`` (ids) at fault among a form's ``all`` inputs: marked (aria-invalid,
  // described by the message, which stands next to the first); the others cleared. False
  // when none of them is on the page (the caller shows the message elsewhere).
  function markFields(all, fields, message, errorId) {
    const $ = (id) => document.getElementById(id);
    for (const id of all) {
      const field = $(id);
      if (!field || field.type === "hidden") continue;
      field.removeAttribute("aria-invalid");
      const described = (field.getAttribute("aria-describedby") || "").split(" ").filter((x) => x && x !== errorId);
      if (described.length) field.setAttribute("aria-describedby", described.join(" "));
      else field.removeAttribute("aria-describedby");
    }
    $(errorId)?.remove();
    const marked = fields.filter((id) => $(id) && $(id).type !== "hidden");
    if (!marked.length) return false;
    for (const id of marked) {
      const field = $(id);
      field.setAttribute("aria-invalid", "true");
      const described = (field.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
      field.setAttribute("aria-describedby", [...described, errorId].join(" "));
    }
    const first = $(marked[0]);
    first.closest(".field").append(el("p", { class: "field-error", id: errorId, role: "alert", text: message }));
    first.focus();
    return true;
  }

  // The case fields (templates/_case_fields.html): an approved request fills in its case
  // number and purpose.
  document.addEventListener("change", (event) => {
    const select = event.target;
    if (select.id !== "request_id" || select.tagName !== "SELECT") return;
    const opt = select.selectedOptions[0];
    if (opt && opt.value) {
      document.getElementById("case_number").value = opt.dataset.case;
      document.getElementById("purpose").value = opt.dataset.purpose;
    }
  });

  // Forms that need a confirmation before they change something irreversible.
  document.addEventListener("submit", (event) => {
    const form = event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });

  // Ingest jobs on the admin page: poll their progress while any is unfinished.
  function pollJobs() {
    const list = document.getElementById("jobs-list");
    if (!list || list.dataset.poll !== "yes") return;
    const tick = async () => {
      let jobs;
      try {
        jobs = await api("/api/v1/jobs");
      } catch (_) {
        setTimeout(tick, 3000);
        return;
      }
      let running = false;
      for (const job of jobs) {
        const item = list.querySelector(`[data-job="${job.id}"]`);
        if (!item) continue;
        const finished = ["done", "failed", "cancelled"].includes(job.status);
        running = running || !finished;
        const status = item.querySelector('[data-field="status"]');
        status.textContent = job.status;
        status.className = `status-pill status-${job.status}`;
        const bar = item.querySelector('[data-field="progress"]');
        if (job.total) {
          bar.max = job.total;
          bar.value = job.done;
        }
        const text = item.querySelector('[data-field="text"]');
        if (job.summary) text.textContent = job.summary.line;
        else if (job.error) text.textContent = job.error.message;
        else text.textContent = `${job.done} of ${job.total ?? "…"} images`;
        if (finished) item.querySelector('[data-field="cancel"]')?.remove();
      }
      if (running) setTimeout(tick, 1000);
    };
    setTimeout(tick, 500);
  }
  document.addEventListener("DOMContentLoaded", pollJobs);

  return { api, el, csrf, fmtRate, fmtCount, fmtScore, markFields };
})();
