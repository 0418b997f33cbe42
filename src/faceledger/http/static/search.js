// The search page: pick or drop a photo, see its faces, pick one, search; the results are
// the search's record page (record.js).
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
      // The results are the search's record: a page to come back to (refresh, Back, a link).
      window.location.assign(`/searches/${result.search_id}`);
    } catch (err) {
      const text = `${err.message}${err.code ? ` (${err.code})` : ""}`;
      const marked = markFields(err.fields || [], text);
      setStatus(searchStatus, marked ? "The search was refused: see the marked field." : text, true);
    } finally {
      state.busy = false;
      updateButton();
    }
  });

})();
