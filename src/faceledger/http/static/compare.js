// The side-by-side view (templates/_compare_view.html): two faces as the model aligned them,
// at the same size, zoomed together, with their landmarks on request, and both full images
// with the faces boxed. Fed by a search's comparison (embedded in the page, or fetched with
// the probe photo supplied again) or by a 1:1 verification.
"use strict";

(() => {
  const { api, el, fmtRate, fmtCount, fmtScore, markFields } = window.faceledger;
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const SIDES = ["a", "b"];
  const ZOOM_MIN = 1;
  const ZOOM_MAX = 4;
  const ZOOM_STEP = 0.5;


  // -- zoom and landmarks: both chips together ------------------------------------------
  let zoom = 2;
  function applyZoom() {
    for (const side of SIDES) {
      const frame = $(`chip-frame-${side}`);
      const size = Number(frame.dataset.size || 150);
      frame.style.width = `${size * zoom}px`;
      frame.style.height = `${size * zoom}px`;
    }
    $("zoom").value = String(zoom);
    $("zoom-value").textContent = `${zoom}×`;
    $("zoom-out").disabled = zoom <= ZOOM_MIN;
    $("zoom-in").disabled = zoom >= ZOOM_MAX;
  }
  function setZoom(value) {
    zoom = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, Math.round(value / ZOOM_STEP) * ZOOM_STEP));
    applyZoom();
  }
  $("zoom").addEventListener("input", () => setZoom(Number($("zoom").value)));
  $("zoom-out").addEventListener("click", () => setZoom(zoom - ZOOM_STEP));
  $("zoom-in").addEventListener("click", () => setZoom(zoom + ZOOM_STEP));
  $("show-landmarks").addEventListener("change", () => {
    // an SVG element has no "hidden" property: the chips' container shows or hides both
    $("chips").classList.toggle("show-marks", $("show-landmarks").checked);
  });

  // -- one side: the chip with its landmarks, the full image with the face boxed ------------
  function drawSide(side, face, imageSrc, chipLabel, fullLabel) {
    const size = face.chip_size;
    const frame = $(`chip-frame-${side}`);
    frame.dataset.size = String(size);
    const chip = $(`chip-${side}`);
    chip.src = `data:image/png;base64,${face.chip_png}`;
    chip.alt = `${chipLabel}, aligned`;
    const svg = $(`marks-${side}`);
    svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
    svg.replaceChildren(
      ...face.chip_landmarks.map(([x, y], i) => {
        const dot = document.createElementNS(SVG, "circle");
        // landmarks are pixel indices; the viewBox counts pixel edges
        dot.setAttribute("cx", String(x + 0.5));
        dot.setAttribute("cy", String(y + 0.5));
        dot.setAttribute("r", String(size / 60));
        dot.setAttribute("class", `mark mark-${i}`);
        return dot;
      }),
    );
    $(`chip-caption-${side}`).textContent = chipLabel;
    const full = $(`full-${side}`);
    const box = $(`full-box-${side}`);
    box.hidden = true;
    full.onload = () => {
      const w = face.image_width;
      const h = face.image_height;
      const [l, t, r, b] = face.bbox;
      box.style.left = `${(100 * l) / w}%`;
      box.style.top = `${(100 * t) / h}%`;
      box.style.width = `${(100 * (r - l)) / w}%`;
      box.style.height = `${(100 * (b - t)) / h}%`;
      box.hidden = false;
    };
    full.alt = `${fullLabel}, the face boxed`;
    full.src = imageSrc;
    $(`full-caption-${side}`).textContent = `${fullLabel} · face at ${face.bbox.join(", ")} · ${face.image_width}×${face.image_height} px`;
  }

  function show(view) {
    drawSide("a", view.a.face, view.a.src, view.a.chip, view.a.full);
    drawSide("b", view.b.face, view.b.src, view.b.chip, view.b.full);
    $("score-line").replaceChildren(...view.score.flatMap(([dt, dd]) => [el("dt", { text: dt }), el("dd", { text: dd })]));
    $("compare").hidden = false;
    applyZoom();
  }

  // -- a search's candidate -----------------------------------------------------------------
  function fromCandidate(d) {
    const extrapolated = d.est_fmr_extrapolated ? " (extrapolated beyond the calibration data)" : "";
    const p = (d.provenance || [])[0] || {};
    return {
      a: {
        face: d.probe,
        src: `data:image/jpeg;base64,${d.probe.image_jpeg}`,
        chip: `Probe (search ${d.search_id}, face ${d.probe_face_index + 1})`,
        full: d.probe_source === "kept" ? "The probe as searched" : "The probe as searched (supplied again, not kept)",
      },
      b: {
        face: d.candidate,
        src: `data:image/jpeg;base64,${d.candidate.image_jpeg}`,
        chip: `Candidate #${d.rank} (gallery face ${d.face_id})`,
        full: `Gallery image ${d.image_sha256 ? d.image_sha256.slice(0, 12) + "…" : ""}${p.source ? ` · ${p.source}` : ""}`,
      },
      score: [
        ["Score", fmtScore(d.score)],
        ["Est. false match rate", fmtRate(d.est_fmr) + extrapolated],
        ["Expected false candidates", `${fmtCount(d.expected_false_candidates)} at this gallery size (${d.gallery_faces} faces)`],
        ["Case", `${d.case_number} · ${d.purpose}`],
        ["Model", d.model_id],
      ],
    };
  }

  const embedded = $("compare-data");
  const initial = embedded ? JSON.parse(embedded.textContent) : null;
  if (initial) show(fromCandidate(initial));

  const probeForm = $("probe-form");
  if (probeForm) {
    probeForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const status = $("compare-status");
      const input = $("probe");
      if (!input.files.length) {
        status.textContent = "Choose the photo that was searched.";
        status.classList.add("error");
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return;
      }
      input.removeAttribute("aria-invalid");
      status.classList.remove("error");
      status.textContent = "Checking the photo and comparing…";
      const data = new FormData();
      data.append("probe", input.files[0], input.files[0].name);
      $("compare-btn").disabled = true;
      try {
        const { search, face } = probeForm.dataset;
        const result = await api(`/api/v1/searches/${search}/faces/${face}/compare`, { method: "POST", body: data });
        status.textContent = "Compared; the photo was not kept.";
        show(fromCandidate(result));
        $("compare-title").focus();
      } catch (err) {
        status.textContent = err.code === "not-the-probe"
          ? "That is not the photo this search searched (its fingerprint differs). Nothing was compared."
          : `${err.message}${err.code ? ` (${err.code})` : ""}`;
        status.classList.add("error");
        input.setAttribute("aria-invalid", "true");
      } finally {
        $("compare-btn").disabled = false;
      }
    });
  }

  // -- a 1:1 verification ---------------------------------------------------------------------
  const verifyForm = $("verify-form");
  if (verifyForm) {
    const FIELDS = ["photo_a", "photo_b", "case_number", "purpose", "justification", "request_id"];
    const status = $("verify-status");
    const mark = (fields, message) => markFields(FIELDS, fields, message, "verify-error");
    let urls = [];
    verifyForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      status.classList.remove("error");
      const missing = FIELDS.filter((id) => $(id) && $(id).required && !(id.startsWith("photo_") ? $(id).files.length : $(id).value.trim()));
      if (missing.length) {
        status.textContent = "Choose both photos and fill in the case number, purpose and justification.";
        status.classList.add("error");
        mark(missing, "Needed for every comparison.");
        return;
      }
      mark([], "");
      const data = new FormData(verifyForm);
      data.append("with_chips", "true");
      $("verify-btn").disabled = true;
      status.textContent = "Comparing…";
      try {
        const r = await api("/api/v1/verify", { method: "POST", body: data });
        urls.forEach((u) => URL.revokeObjectURL(u));
        urls = [URL.createObjectURL($("photo_a").files[0]), URL.createObjectURL($("photo_b").files[0])];
        const [fa, fb] = ["A", "B"].map((label) => r.faces.find((f) => f.photo === label));
        const extrapolated = r.est_fmr_extrapolated ? " (extrapolated beyond the calibration data)" : "";
        status.textContent = `Verification ${r.verify_id} recorded.`;
        show({
          a: { face: fa, src: urls[0], chip: "Photo A", full: `Photo A (${fa.faces_in_photo} face${fa.faces_in_photo === 1 ? "" : "s"} found)` },
          b: { face: fb, src: urls[1], chip: "Photo B", full: `Photo B (${fb.faces_in_photo} face${fb.faces_in_photo === 1 ? "" : "s"} found)` },
          score: [
            ["Score", fmtScore(r.score)],
            ["Est. false match rate", fmtRate(r.est_fmr) + extrapolated],
            ["Comparison", `1:1, verification ${r.verify_id}, case ${r.case_number} · ${r.purpose}`],
            ["Model", r.model_id],
          ],
        });
        $("compare-title").focus();
      } catch (err) {
        const text = `${err.message}${err.code ? ` (${err.code})` : ""}`;
        const marked = mark(err.fields || [], text);
        status.textContent = marked ? "The comparison was refused: see the marked field." : text;
        status.classList.add("error");
      } finally {
        $("verify-btn").disabled = false;
      }
    });
  }
})();
