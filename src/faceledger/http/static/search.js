// The search page: pick or drop a photo, see its faces, pick one (or mark one by hand: drag
// a box on the photo, or type its pixels), search; the results are the search's record page
// (record.js). A video clip is searched as it is; where it shows several people the server
// answers choose-track with one thumbnail per person (track), and the search runs again with
// the one picked. Several photos of one person (2 to maxPhotos) are searched together: each
// photo's faces are found, the user picks the face in each and states that the photos show
// the same person; the faces are fused into one probe on the server.
"use strict";

(() => {
  const { api, el, markFields: markAmong } = window.faceledger;
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
  const stageInner = $("stage-inner");
  const handBox = $("hand-box");
  const handDetails = $("hand-details");
  const HAND_FIELDS = ["hand-left", "hand-top", "hand-right", "hand-bottom"].map($);
  const video = $("probe-video");
  const tracksFieldset = $("tracks-fieldset");
  const tracksList = $("tracks");
  const SEARCH_FACE = searchBtn.textContent;
  const photosFieldset = $("photos-fieldset");
  const photosList = $("photos");
  const samePerson = $("same_person");

  // selected: a detected face's index, "hand" for a box marked by hand, or null.
  // size: the photo's pixels as the server decoded it (face boxes are in these).
  // video: the file is a clip; track: the person (track) picked in it, once the server listed them.
  // photos: several photos of one person, each {file, n, url, img, faces, selected, list, status}; else null.
  const state = { file: null, faces: [], selected: null, objectUrl: null, busy: false, size: null, drag: null, video: false, track: null, photos: null };

  function setStatus(node, text, isError = false) {
    node.textContent = text;
    node.classList.toggle("error", isError);
  }

  // The case fields at fault: marked (aria-invalid) with the message next to the first one.
  const CASE_FIELDS = ["request_id", "case_number", "purpose", "justification"];
  const markFields = (fields, message) =>
    markAmong(CASE_FIELDS, fields, message, "case-error");

  // -- the photo --------------------------------------------------------------------------
  // Whether a file starts like a video container, by its bytes (as the server tells them apart).
  async function isVideoFile(file) {
    const head = new Uint8Array(await file.slice(0, 400).arrayBuffer());
    const text = (a, b) => String.fromCharCode(...head.slice(a, b));
    if (text(4, 8) === "ftyp") return !["heic", "heix", "mif1", "msf1", "avif", "avis"].includes(text(8, 12));
    if (["moov", "mdat", "wide", "free", "skip"].includes(text(4, 8))) return true;
    if (head[0] === 0x1a && head[1] === 0x45 && head[2] === 0xdf && head[3] === 0xa3) return true;
    if (text(0, 4) === "RIFF" && text(8, 12) === "AVI ") return true;
    return head.length > 376 && head[0] === 0x47 && head[188] === 0x47 && head[376] === 0x47;
  }

  // The faces in a photo (boxes, quality), for picking one: /detect, recorded with the case
  // it serves when the case number is already filled in.
  function detectFaces(file) {
    const data = new FormData();
    data.append("photo", file, file.name);
    const caseField = $("case_number");
    if (caseField && caseField.value.trim()) data.append("case_number", caseField.value.trim());
    return api("/api/v1/detect", { method: "POST", body: data });
  }

  async function useFile(file) {
    if (!file) return;
    reset();
    if (file.size > config.maxUpload) {
      setStatus(detectStatus, `${file.name} is larger than the upload limit.`, true);
      return;
    }
    if (await isVideoFile(file)) {
      useVideo(file);
      return;
    }
    if (file.type && !file.type.startsWith("image/")) {
      setStatus(detectStatus, `${file.name} is not an image.`, true);
      return;
    }
    state.file = file;
    state.objectUrl = URL.createObjectURL(file);
    img.src = state.objectUrl;
    stage.hidden = false;
    setStatus(detectStatus, "Finding faces…");
    try {
      const found = await detectFaces(file);
      state.size = { width: found.width, height: found.height };
      $("photo-size").textContent = `${found.width} × ${found.height}`;
      handDetails.hidden = false;
      showFaces(found);
    } catch (err) {
      setStatus(detectStatus, `${err.message}${err.code ? ` (${err.code})` : ""}`, true);
    }
  }

  // A clip: nothing is analysed until the search (the case fields come first).
  function useVideo(file) {
    Object.assign(state, { file, video: true, selected: "video", objectUrl: URL.createObjectURL(file) });
    video.src = state.objectUrl;
    video.hidden = false;
    stage.hidden = true;
    setStatus(detectStatus, "Video clip. The people in it are found when you search; if it shows several, you pick one.");
    picked.textContent = "The person in the clip will be searched (with several people, you pick one).";
    searchBtn.textContent = "Search this clip";
    updateButton();
  }

  function showTracks(body) {
    const tracks = body.tracks;
    tracksList.replaceChildren();
    tracks.forEach((t) => {
      const label = `Person ${t.track}`;
      const detail = ` · frames ${t.first_frame}–${t.last_frame} · ${t.faces} face${t.faces === 1 ? "" : "s"} · quality ${t.quality.toFixed(2)}`;
      const radio = el("input", { type: "radio", name: "track", value: String(t.track), id: `track-${t.track}`, onchange: () => selectTrack(t.track) });
      const thumb = el("img", { class: "face-thumb", src: `data:image/jpeg;base64,${t.thumbnail_jpeg}`, alt: `${label}: the best face, frame ${t.best_frame}` });
      const tags = t.below_min_quality
        ? el("span", { class: "warn-tag", text: "below quality minimum" })
        : el("span", { class: "ok-tag", text: `${t.faces_searchable} face${t.faces_searchable === 1 ? "" : "s"} to search` });
      tracksList.append(el("li", {},
        el("label", { class: "face-option", for: `track-${t.track}`, "data-track": String(t.track) }, radio, thumb,
          el("span", { class: "face-text" },
            el("span", {}, el("strong", { text: label }), detail),
            el("span", { class: "face-warnings" }, tags)))));
    });
    tracksFieldset.hidden = false;
    state.track = null;
    state.selected = null;
    picked.textContent = "No person picked yet.";
    searchBtn.textContent = "Search this person";
    updateButton();
    setStatus(searchStatus, `The clip shows ${tracks.length} people: pick the one to search.`);
    tracksList.querySelector("input")?.focus();
  }

  function selectTrack(n) {
    state.track = n;
    state.selected = "video";
    picked.textContent = `Person ${n} picked.`;
    searchBtn.textContent = `Search person ${n}`;
    updateButton();
  }

  // -- several photos of one person ------------------------------------------------------
  async function useFiles(files) {
    const list = Array.from(files || []);
    if (list.length <= 1) {
      await useFile(list[0]);
      return;
    }
    reset();
    stage.hidden = true;
    if (list.length > config.maxPhotos) {
      setStatus(detectStatus, `At most ${config.maxPhotos} photos of one person are searched together; ${list.length} were chosen.`, true);
      return;
    }
    const total = list.reduce((sum, f) => sum + f.size, 0);
    if (total > config.maxUpload) {
      setStatus(detectStatus, `The ${list.length} photos together are larger than the upload limit.`, true);
      return;
    }
    for (const file of list) {
      let problem = null;
      if (file.size > config.maxUpload) problem = "is larger than the upload limit";
      else if (await isVideoFile(file)) problem = "is a video clip: a clip is searched on its own, not among photos";
      else if (file.type && !file.type.startsWith("image/")) problem = "is not an image";
      if (problem) {
        setStatus(detectStatus, `${file.name} ${problem}.`, true);
        return;
      }
    }
    state.photos = list.map((file, k) => ({ file, n: k + 1, url: URL.createObjectURL(file), faces: [], selected: null }));
    state.photos.forEach((p) => photosList.append(photoItem(p)));
    photosFieldset.hidden = false;
    searchBtn.textContent = `Search ${list.length} photos as one person`;
    picked.textContent = "Pick the face in each photo.";
    setStatus(detectStatus, `Finding faces in ${list.length} photos…`);
    for (const p of state.photos) await detectPhoto(p);  // one at a time: each is recorded
    const without = state.photos.filter((p) => !p.faces.length).map((p) => p.n);
    setStatus(
      detectStatus,
      without.length
        ? `No face was found in photo ${without.join(", ")}: choose the photos again without ${without.length === 1 ? "it" : "them"}.`
        : "Pick the face in each photo, and confirm that the photos show the same person.",
      without.length > 0,
    );
    updatePhotos();
  }

  function photoItem(p) {
    p.img = el("img", { src: p.url, alt: `Photo ${p.n}: ${p.file.name}` });
    p.status = el("span", { class: "hint", text: "Finding faces…" });
    p.list = el("ul", { class: "face-list", "aria-label": `Faces in photo ${p.n}` });
    return el("li", { class: "photo-item", id: `photo-${p.n}` }, p.img,
      el("div", {}, el("p", {}, el("strong", { text: `Photo ${p.n}` }), ` · ${p.file.name} · `, p.status), p.list));
  }

  async function detectPhoto(p) {
    try {
      const found = await detectFaces(p.file);
      p.faces = found.faces.slice().sort((a, b) => a.bbox[0] - b.bbox[0]);
    } catch (err) {
      p.status.textContent = `${err.message}${err.code ? ` (${err.code})` : ""}`;
      p.status.classList.add("error");
      return;
    }
    const n = p.faces.length;
    p.status.textContent = n === 0 ? "no face found" : n === 1 ? "1 face" : `${n} faces: pick one`;
    p.status.classList.toggle("error", n === 0);
    p.faces.forEach((face, i) => {
      const id = `photo-${p.n}-face-${i}`;
      const radio = el("input", { type: "radio", name: `photo-${p.n}-face`, value: String(i), id, onchange: () => pickPhotoFace(p, i) });
      const tags = face.warnings.map((w) => el("span", { class: "warn-tag", text: WARNINGS[w] || w }));
      if (face.below_min_quality) tags.push(el("span", { class: "warn-tag", text: "below quality minimum: not fused" }));
      p.list.append(el("li", {},
        el("label", { class: "face-option", for: id }, radio, thumbnail(face.bbox, p.img),
          el("span", { class: "face-text" },
            el("span", {}, el("strong", { text: `Photo ${p.n}, face ${i + 1}` }), ` · quality ${face.quality.toFixed(2)}`),
            el("span", { class: "face-warnings" }, tags)))));
    });
    if (n === 1) {
      p.list.querySelector("input").checked = true;
      pickPhotoFace(p, 0);
    }
  }

  function pickPhotoFace(p, i) {
    p.selected = i;
    updatePhotos();
  }

  function updatePhotos() {
    const missing = state.photos.filter((p) => p.selected === null).map((p) => p.n);
    state.selected = missing.length ? null : "photos";
    picked.textContent = missing.length
      ? `Pick the face in photo ${missing.join(", ")}.`
      : samePerson.checked
        ? `One face picked in each of the ${state.photos.length} photos.`
        : `One face picked in each of the ${state.photos.length} photos; confirm that they show the same person.`;
    updateButton();
  }

  samePerson.addEventListener("change", () => {
    if (state.photos) updatePhotos();
  });

  function reset() {
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    (state.photos || []).forEach((p) => URL.revokeObjectURL(p.url));
    photosList.replaceChildren();
    photosFieldset.hidden = true;
    samePerson.checked = false;
    Object.assign(state, { file: null, faces: [], selected: null, objectUrl: null, size: null, drag: null, video: false, track: null, photos: null });
    video.hidden = true;
    video.removeAttribute("src");
    tracksList.replaceChildren();
    tracksFieldset.hidden = true;
    searchBtn.textContent = SEARCH_FACE;
    boxes.replaceChildren();
    facesList.replaceChildren();
    facesFieldset.hidden = true;
    handBox.hidden = true;
    handDetails.hidden = true;
    HAND_FIELDS.forEach((f) => { f.value = ""; f.removeAttribute("aria-invalid"); });
    faceBoxInput.value = "";
    picked.textContent = "No face picked yet.";
    updateButton();
  }

  function showFaces(found) {
    // Number faces left to right, as people read a photo.
    state.faces = found.faces.slice().sort((a, b) => a.bbox[0] - b.bbox[0]);
    const n = state.faces.length;
    if (!n) {
      setStatus(
        detectStatus,
        "No face was found in this photo. If you can see one, draw a box around it on the photo " +
          "(or type its box under “Mark a face by hand”) to search it as a face marked by hand.",
        true,
      );
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
  function thumbnail(bbox, source = img) {
    const canvas = el("canvas", { class: "face-thumb", width: "112", height: "112", "aria-hidden": "true" });
    const draw = () => {
      const [l, t, r, b] = bbox;
      const side = Math.max(r - l, b - t) * 1.3;
      const cx = (l + r) / 2;
      const cy = (t + b) / 2;
      canvas.getContext("2d").drawImage(source, cx - side / 2, cy - side / 2, side, side, 0, 0, 112, 112);
    };
    if (source.complete && source.naturalWidth) draw();
    else source.addEventListener("load", draw, { once: true });
    return canvas;
  }

  function select(i) {
    state.selected = i;
    handBox.hidden = true;
    const face = state.faces[i];
    faceBoxInput.value = face.bbox.join(",");
    boxes.querySelectorAll(".box").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.face === String(i))));
    const radio = $(`face-${i}`);
    if (radio) radio.checked = true;
    picked.textContent = `Face ${i + 1} picked` + (face.warnings.length ? ` (${face.warnings.map((w) => WARNINGS[w] || w).join(", ")}: expect weaker results).` : ".");
    updateButton();
  }

  function updateButton() {
    searchBtn.disabled = state.busy || state.selected === null || (state.photos !== null && !samePerson.checked);
  }

  // -- a face marked by hand --------------------------------------------------------------
  // The server decides: a box that overlaps a detected face enough picks that face, any
  // other box is searched as a face marked by hand. The page shows which it will be.
  function iou(a, b) {
    const ix = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]));
    const iy = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
    const inter = ix * iy;
    const union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    return union > 0 ? inter / union : 0;
  }

  function boxProblem(box) {
    const { width, height } = state.size;
    if (box.some((v) => !Number.isFinite(v))) return "Enter all four numbers of the box.";
    const [l, t, r, b] = box;
    if (r <= l || b <= t) return "The box needs right > left and bottom > top.";
    if (l < 0 || t < 0 || r > width || b > height) return `The box must lie inside the photo (${width} × ${height} pixels).`;
    if (Math.min(r - l, b - t) < config.minBoxSide) return `The box is too small: a face needs at least ${config.minBoxSide} pixels a side.`;
    return null;
  }

  function placeHandBox(box) {
    const { width, height } = state.size;
    const [l, t, r, b] = box;
    handBox.style.left = `${(100 * l) / width}%`;
    handBox.style.top = `${(100 * t) / height}%`;
    handBox.style.width = `${(100 * (r - l)) / width}%`;
    handBox.style.height = `${(100 * (b - t)) / height}%`;
    handBox.hidden = false;
  }

  function useHandBox(box) {
    const problem = boxProblem(box);
    if (problem) {
      setStatus(detectStatus, problem, true);
      return false;
    }
    HAND_FIELDS.forEach((f, k) => { f.value = String(box[k]); f.removeAttribute("aria-invalid"); });
    let best = -1;
    state.faces.forEach((face, i) => {
      if (iou(face.bbox, box) >= config.pickMinIou && (best < 0 || iou(face.bbox, box) > iou(state.faces[best].bbox, box))) best = i;
    });
    if (best >= 0) {
      select(best);  // the box picks a face the detector found
      setStatus(detectStatus, `Your box is face ${best + 1}, which the detector found: it is picked.`);
      return true;
    }
    state.selected = "hand";
    faceBoxInput.value = box.join(",");
    boxes.querySelectorAll(".box").forEach((el) => el.setAttribute("aria-pressed", "false"));
    facesList.querySelectorAll("input[type=radio]").forEach((radio) => { radio.checked = false; });
    placeHandBox(box);
    picked.textContent = `Face marked by hand (box ${box.join(", ")}): the landmarks will be fitted inside your box.`;
    setStatus(detectStatus, "Face marked by hand.");
    updateButton();
    return true;
  }

  // The photo pixel under a pointer, inside the photo.
  function photoPoint(event) {
    const rect = img.getBoundingClientRect();
    const { width, height } = state.size;
    const x = ((event.clientX - rect.left) / rect.width) * width;
    const y = ((event.clientY - rect.top) / rect.height) * height;
    return [Math.min(width, Math.max(0, x)), Math.min(height, Math.max(0, y))];
  }

  // After a click or a refused drag: the box marked before (if any) stays where it was.
  function restoreHandBox() {
    if (state.selected === "hand") placeHandBox(faceBoxInput.value.split(",").map(Number));
    else handBox.hidden = true;
  }

  function dragBox() {
    const [x0, y0] = state.drag.start;
    const [x1, y1] = state.drag.end;
    return [Math.round(Math.min(x0, x1)), Math.round(Math.min(y0, y1)), Math.round(Math.max(x0, x1)), Math.round(Math.max(y0, y1))];
  }

  stageInner.addEventListener("pointerdown", (event) => {
    // a detected face's box is a button: clicking it picks that face
    if (!state.size || event.button !== 0 || event.target.closest("button")) return;
    event.preventDefault();
    try {
      stageInner.setPointerCapture(event.pointerId);  // keep the drag when it leaves the photo
    } catch {
      // a pointer the browser no longer tracks: the drag still works inside the photo
    }
    const start = photoPoint(event);
    state.drag = { id: event.pointerId, start, end: start };
  });
  stageInner.addEventListener("pointermove", (event) => {
    if (!state.drag || event.pointerId !== state.drag.id) return;
    state.drag.end = photoPoint(event);
    placeHandBox(dragBox());
  });
  stageInner.addEventListener("pointerup", (event) => {
    if (!state.drag || event.pointerId !== state.drag.id) return;
    state.drag.end = photoPoint(event);
    const box = dragBox();
    state.drag = null;
    const [l, t, r, b] = box;
    if ((r - l < 3 && b - t < 3) || !useHandBox(box)) restoreHandBox();  // a click, or refused
  });
  stageInner.addEventListener("pointercancel", () => {
    state.drag = null;
    restoreHandBox();
  });

  $("hand-use").addEventListener("click", () => {
    const box = HAND_FIELDS.map((f) => (f.value.trim() === "" ? NaN : Math.round(Number(f.value))));
    const ok = useHandBox(box);
    HAND_FIELDS.forEach((f) => (ok ? f.removeAttribute("aria-invalid") : f.setAttribute("aria-invalid", "true")));
    if (!ok) HAND_FIELDS[0].focus();
  });

  input.addEventListener("change", () => useFiles(input.files));
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("dragover");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("dragover")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) useFiles(e.dataTransfer.files);
  });


  // -- the search -------------------------------------------------------------------------
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (state.selected === null || (!state.file && !state.photos)) {
      setStatus(searchStatus, "Pick a photo and a face (or mark one by hand) first.", true);
      return;
    }
    if (state.photos && !samePerson.checked) {
      setStatus(searchStatus, "Confirm that the photos show the same person.", true);
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
    if (state.photos) {
      state.photos.forEach((p) => data.append("probe", p.file, p.file.name));
      data.append("same_person", "true");
      data.append("face_boxes", state.photos.map((p) => p.faces[p.selected].bbox.join(",")).join(";"));
    } else {
      data.append("probe", state.file, state.file.name);
    }
    if (state.video && state.track !== null) data.append("track", String(state.track));
    state.busy = true;
    updateButton();
    setStatus(searchStatus, "Searching…");
    try {
      const result = await api("/api/v1/searches", { method: "POST", body: data });
      setStatus(searchStatus, `Search ${result.search_id} recorded.`);
      // The results are the search's record: a page to come back to (refresh, Back, a link).
      window.location.assign(`/searches/${result.search_id}`);
    } catch (err) {
      if (err.code === "choose-track" && state.video && err.body && Array.isArray(err.body.tracks)) {
        showTracks(err.body);
        return;
      }
      const text = `${err.message}${err.code ? ` (${err.code})` : ""}`;
      const marked = markFields(err.fields || [], text);
      setStatus(searchStatus, marked ? "The search was refused: see the marked field." : text, true);
    } finally {
      state.busy = false;
      updateButton();
    }
  });

})();
