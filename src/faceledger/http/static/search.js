// The search page: pick or drop a photo, see its faces, pick one, search, review leads.
"use strict";

(() => {
  const { api, el } = window.faceledger;
  const $ = (id) => document.getElementById(id);
  const config = JSON.parse($("search-config").textContent);
  const WARNINGS = { small: "small", blurred: "blurred", turned: "turned away" };

  const input = $("probe");
  const drop = $("drop");
  const stage = $("stage");
  const img = $("probe-img");
  const boxes = $("boxes");
  const facesFieldset = $("faces-fieldset");
  const facesList = $("faces");
  const detectStatus = $("detect-status");
  const form = $("search-form");
  const searchBtn = $("search-btn");
  const searchStatus = $("search-status");
  const faceBoxInput = $("face_box");
  const picked = $("picked");
  const results = $("results");
  const dialog = $("candidate-dialog");

  const state = { file: null, faces: [], selected: null, objectUrl: null, busy: false };

  function setStatus(node, text, isError = false) {
    node.textContent = text;
    node.classList.toggle("error", isError);
  }

  // The case fields at fault: marked (aria-invalid) with the message next to the first one.
  const CASE_FIELDS = ["request_id", "case_number", "purpose", "justification"];
  function markFields(fields, message) {
    for (const id of CASE_FIELDS) {
      const field = $(id);
      if (!field || field.type === "hidden") continue;
      field.removeAttribute("aria-invalid");
      const described = (field.getAttribute("aria-describedby") || "").split(" ").filter((x) => x && x !== "case-error");
      if (described.length) field.setAttribute("aria-describedby", described.join(" "));
      else field.removeAttribute("aria-describedby");
    }
    $("case-error")?.remove();
    const marked = fields.filter((id) => $(id) && $(id).type !== "hidden");
    if (!marked.length) return false;
    for (const id of marked) {
      const field = $(id);
      field.setAttribute("aria-invalid", "true");
      const described = (field.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
      field.setAttribute("aria-describedby", [...described, "case-error"].join(" "));
    }
    const first = $(marked[0]);
    first.closest(".field").append(el("p", { class: "field-error", id: "case-error", role: "alert", text: message }));
    first.focus();
    return true;
  }

  function fmtScore(x) {
    return x === null || x === undefined ? "n/a" : x.toFixed(3);
  }
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
  function fmtTime(ts) {
    return ts ? `${ts.replace("T", " ").slice(0, 16)} UTC` : "—";
  }

  // -- the photo --------------------------------------------------------------------------
  async function useFile(file) {
    if (!file) return;
    reset();
    if (file.type && !file.type.startsWith("image/")) {
      setStatus(detectStatus, `${file.name} is not an image.`, true);
      return;
    }
    if (file.size > config.maxUpload) {
      setStatus(detectStatus, `${file.name} is larger than the upload limit.`, true);
      return;
    }
    state.file = file;
    state.objectUrl = URL.createObjectURL(file);
    img.src = state.objectUrl;
    stage.hidden = false;
    setStatus(detectStatus, "Finding faces…");
    const data = new FormData();
    data.append("photo", file, file.name);
    const caseField = document.getElementById("case_number");
    if (caseField && caseField.value.trim()) data.append("case_number", caseField.value.trim());
    try {
      const found = await api("/api/v1/detect", { method: "POST", body: data });
      showFaces(found);
    } catch (err) {
      setStatus(detectStatus, `${err.message}${err.code ? ` (${err.code})` : ""}`, true);
    }
  }

  function reset() {
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    Object.assign(state, { file: null, faces: [], selected: null, objectUrl: null });
    boxes.replaceChildren();
    facesList.replaceChildren();
    facesFieldset.hidden = true;
    faceBoxInput.value = "";
    picked.textContent = "No face picked yet.";
    updateButton();
  }

  function showFaces(found) {
    // Number faces left to right, as people read a photo.
    state.faces = found.faces.slice().sort((a, b) => a.bbox[0] - b.bbox[0]);
    const n = state.faces.length;
    if (!n) {
      setStatus(detectStatus, "No face was found in this photo. Try a sharper or larger photo.", true);
      return;
    }
    setStatus(
      detectStatus,
      n === 1 ? "1 face found." : `${n} faces found. Pick the one to search.`,
    );
    state.faces.forEach((face, i) => {
      const [l, t, r, b] = face.bbox;
      const warn = face.warnings.length > 0 || face.below_min_quality;
      const label = `Face ${i + 1}`;
      const describe = [
        label,
        `quality ${face.quality.toFixed(2)}`,
        ...face.warnings.map((w) => WARNINGS[w] || w),
        face.below_min_quality ? "below the policy's quality minimum" : null,
      ].filter(Boolean).join(", ");
      const box = el("button", {
        type: "button",
        class: `box${warn ? " warn" : ""}`,
        "aria-pressed": "false",
        "aria-label": describe,
        title: describe,
        "data-face": String(i),
        onclick: () => select(i),
      }, el("span", { class: "box-label", "aria-hidden": "true", text: `${i + 1}` }));
      box.style.left = `${(100 * l) / found.width}%`;
      box.style.top = `${(100 * t) / found.height}%`;
      box.style.width = `${(100 * (r - l)) / found.width}%`;
      box.style.height = `${(100 * (b - t)) / found.height}%`;
      boxes.append(box);

      const tags = face.warnings.map((w) =>
        el("span", { class: "warn-tag", text: WARNINGS[w] || w, title: face.warning_text[face.warnings.indexOf(w)] }));
      if (face.below_min_quality) tags.push(el("span", { class: "warn-tag", text: "below quality minimum" }));
      if (!tags.length) tags.push(el("span", { class: "ok-tag", text: "good quality" }));
      const radio = el("input", { type: "radio", name: "face", value: String(i), id: `face-${i}`, onchange: () => select(i) });
      facesList.append(el("li", {},
        el("label", { class: "face-option", for: `face-${i}` }, radio, thumbnail(face.bbox),
          el("span", { class: "face-text" },
            el("span", {}, el("strong", { text: label }), ` · quality ${face.quality.toFixed(2)} · ${face.size} px`),
            el("span", { class: "face-warnings" }, tags),
            face.warning_text.length ? el("span", { class: "hint", text: face.warning_text.join("; ") + "." }) : null))));
    });
    facesFieldset.hidden = false;
    if (n === 1) select(0);
  }

  // A small picture of one face, cut from the photo in the browser (nothing is uploaded).
  function thumbnail(bbox) {
    const canvas = el("canvas", { class: "face-thumb", width: "112", height: "112", "aria-hidden": "true" });
    const draw = () => {
      const [l, t, r, b] = bbox;
      const side = Math.max(r - l, b - t) * 1.3;
      const cx = (l + r) / 2;
      const cy = (t + b) / 2;
      canvas.getContext("2d").drawImage(img, cx - side / 2, cy - side / 2, side, side, 0, 0, 112, 112);
    };
    if (img.complete && img.naturalWidth) draw();
    else img.addEventListener("load", draw, { once: true });
    return canvas;
  }

  function select(i) {
    state.selected = i;
    const face = state.faces[i];
    faceBoxInput.value = face.bbox.join(",");
    boxes.querySelectorAll(".box").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.face === String(i))));
    const radio = $(`face-${i}`);
    if (radio) radio.checked = true;
    picked.textContent = `Face ${i + 1} picked` + (face.warnings.length ? ` (${face.warnings.map((w) => WARNINGS[w] || w).join(", ")}: expect weaker results).` : ".");
    updateButton();
  }

  function updateButton() {
    searchBtn.disabled = state.busy || state.selected === null;
  }

  input.addEventListener("change", () => useFile(input.files[0]));
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("dragover");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("dragover")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) useFile(e.dataTransfer.files[0]);
  });

  // An approved request fills in its case and purpose.
  const requestSelect = $("request_id");
  if (requestSelect && requestSelect.tagName === "SELECT") {
    requestSelect.addEventListener("change", () => {
      const opt = requestSelect.selectedOptions[0];
      if (opt && opt.value) {
        $("case_number").value = opt.dataset.case;
        $("purpose").value = opt.dataset.purpose;
      }
    });
  }

  // -- the search -------------------------------------------------------------------------
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (state.selected === null || !state.file) {
      setStatus(searchStatus, "Pick a photo and a face first.", true);
      return;
    }
    const missing = ["case_number", "purpose", "justification"].filter((id) => !$(id).value.trim());
    if (missing.length) {
      setStatus(searchStatus, "Fill in the case number, purpose and justification.", true);
      markFields(missing, "Needed for every search.");
      return;
    }
    markFields([], "");
    const data = new FormData(form);
    data.append("probe", state.file, state.file.name);
    state.busy = true;
    updateButton();
    setStatus(searchStatus, "Searching…");
    try {
      const result = await api("/api/v1/searches", { method: "POST", body: data });
      setStatus(searchStatus, `Search ${result.search_id} recorded.`);
      showResults(result);
    } catch (err) {
      const text = `${err.message}${err.code ? ` (${err.code})` : ""}`;
      const marked = markFields(err.fields || [], text);
      setStatus(searchStatus, marked ? "The search was refused: see the marked field." : text, true);
    } finally {
      state.busy = false;
      updateButton();
    }
  });

  function showResults(result) {
    const face = result.faces.find((f) => f.selected) || result.faces[0];
    const list = $("candidates");
    list.replaceChildren();
    const label = `face ${state.selected + 1}`;
    $("results-title").textContent = `Candidates for ${label}`;
    $("results-summary").replaceChildren(
      el("a", { href: `/searches/${result.search_id}`, text: `Search ${result.search_id}` }),
      ` · case ${result.case_number} · ${result.purpose} · gallery of ${result.gallery_faces} faces · model ${result.model_id}`,
    );
    const empty = $("results-empty");
    empty.hidden = true;
    if (!face) {
      empty.textContent = "No face was found in the region around the face you picked.";
      empty.hidden = false;
    } else if (face.below_min_quality) {
      empty.textContent = "This face is below the policy's minimum quality, so it was not compared.";
      empty.hidden = false;
    } else if (!face.candidates.length) {
      empty.textContent = "The gallery returned no candidates.";
      empty.hidden = false;
    }
    const calib = $("calib-note");
    const uncalibrated = face && face.candidates.length && face.candidates[0].est_fmr === null;
    calib.hidden = !uncalibrated;
    calib.textContent = uncalibrated
      ? `No score calibration is installed for model ${result.model_id}: false match rates cannot be estimated, so treat every score with extra caution.`
      : "";
    for (const c of face ? face.candidates : []) {
      const p = (c.provenance && c.provenance[0]) || {};
      const who = p.subject_label || shortPath(p.original_path) || "unlabelled";
      const open = el("button", { type: "button", class: "btn btn-secondary btn-small", onclick: () => openCandidate(c, result) },
        "Open", el("span", { class: "visually-hidden", text: ` candidate ${c.rank}` }));
      list.append(el("li", { class: `candidate${c.expected_false_candidates >= 1 ? " high-fmr" : ""}`, "data-rank": String(c.rank) },
        el("img", { class: "crop", src: c.crop_url, alt: `Gallery face of candidate ${c.rank}`, loading: "lazy" }),
        el("div", { class: "cand-body" },
          el("p", { class: "cand-rank" }, `#${c.rank}`, el("span", { class: "cand-score", title: "cosine score", text: fmtScore(c.score) })),
          el("dl", { class: "metrics" },
            el("dt", { text: "Score" }), el("dd", { text: fmtScore(c.score) }),
            el("dt", { text: "Est. false match rate" }),
            el("dd", { text: fmtRate(c.est_fmr) + (c.est_fmr_extrapolated ? "*" : ""), title: c.est_fmr_extrapolated ? "extrapolated beyond the calibration data" : null })),
          el("p", { class: "expected" },
            "Expected false candidates at this gallery size: ",
            el("strong", { text: fmtCount(c.expected_false_candidates) }),
            el("span", { class: "muted", text: ` (${result.gallery_faces} faces)` })),
          el("p", { class: "prov", text: `${who} · ${p.source || "unknown source"}${p.captured_at ? " · " + p.captured_at : ""}` }),
          open)));
    }
    results.hidden = false;
    $("results-title").focus();
  }

  function shortPath(path) {
    if (!path) return "";
    const parts = path.split(/[\\/!]/);
    return parts[parts.length - 1];
  }

  // -- one candidate: the source image with the face boxed ---------------------------------
  function openCandidate(c, result) {
    const p = c.provenance || [];
    const dimg = $("dialog-img");
    const box = $("dialog-box");
    box.hidden = true;
    $("dialog-title").textContent = `Candidate ${c.rank} · score ${fmtScore(c.score)}`;
    dimg.alt = `Source image of candidate ${c.rank}, the matching face boxed`;
    dimg.onload = () => {
      const w = dimg.naturalWidth;
      const h = dimg.naturalHeight;
      const [l, t, r, b] = c.bbox;
      box.style.left = `${(100 * l) / w}%`;
      box.style.top = `${(100 * t) / h}%`;
      box.style.width = `${(100 * (r - l)) / w}%`;
      box.style.height = `${(100 * (b - t)) / h}%`;
      box.hidden = false;
    };
    dimg.src = c.image_url;
    $("dialog-caption").textContent = `Image ${c.image_sha256.slice(0, 16)}… · face ${c.face_id}`;
    const details = $("dialog-details");
    details.replaceChildren(
      el("div", { class: "notice notice-inline", role: "note", text: result.notice }),
      el("h3", { text: "Match" }),
      el("dl", { class: "kv" },
        el("dt", { text: "Score" }), el("dd", { text: fmtScore(c.score) }),
        el("dt", { text: "Est. false match rate" }), el("dd", { text: fmtRate(c.est_fmr) + (c.est_fmr_extrapolated ? " (extrapolated)" : "") }),
        el("dt", { text: "Expected false candidates" }), el("dd", { text: `${fmtCount(c.expected_false_candidates)} in a gallery of ${result.gallery_faces}` }),
        el("dt", { text: "Face quality" }), el("dd", { text: c.quality.toFixed(2) })),
      el("h3", { text: p.length > 1 ? `Provenance (${p.length} sources)` : "Provenance" }),
      ...p.map((x) => el("dl", { class: "kv" },
        el("dt", { text: "Source" }), el("dd", { text: x.source || "" }),
        el("dt", { text: "Subject label" }), el("dd", { text: x.subject_label || "—" }),
        el("dt", { text: "Original" }), el("dd", { class: "wrap", text: x.original_path || "" }),
        el("dt", { text: "URL" }), el("dd", {}, x.source_url ? el("a", { href: x.source_url, rel: "noopener noreferrer", target: "_blank", text: x.source_url }) : "—"),
        el("dt", { text: "Captured" }), el("dd", { text: x.captured_at || "—" }),
        el("dt", { text: "Legal basis" }), el("dd", { text: x.legal_basis || "" }),
        el("dt", { text: "Ingested" }), el("dd", { text: fmtTime(x.ingested_at) }))));
    dialog.showModal();
    $("dialog-close").focus();
  }

  $("dialog-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (e) => {
    if (e.target === dialog) dialog.close();
  });
})();
