// A search record page: the candidate dialog (the source image with the matching face
// boxed, the scores and the provenance), from the record the page embeds.
"use strict";

(() => {
  const { el, fmtRate, fmtCount, fmtScore } = window.faceledger;
  const $ = (id) => document.getElementById(id);
  const record = JSON.parse($("search-record").textContent);
  const dialog = $("candidate-dialog");

  function fmtTime(ts) {
    return ts ? `${ts.replace("T", " ").slice(0, 16)} UTC` : "—";
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

  for (const button of document.querySelectorAll("button[data-open]")) {
    const [faceIndex, rank] = button.dataset.open.split(":").map(Number);
    const face = record.faces.find((f) => f.face_index === faceIndex);
    const c = face && face.candidates.find((x) => x.rank === rank);
    if (c) button.addEventListener("click", () => openCandidate(c, record));
  }
})();
