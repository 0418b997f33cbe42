"""``search`` (a probe against the gallery, recorded in the ledger) and ``embed`` (a photo's
faces, touching no gallery); both are registered at the top level by :mod:`faceledger.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from faceledger.cli.common import (
    CHOOSE_TRACK_EXIT,
    NO_FACE_EXIT,
    AsUser,
    DataDir,
    Detector,
    Device,
    Embedder,
    JsonOut,
    MinFace,
    ModelDir,
    count_text,
    dump,
    fail,
    fmr_text,
    make_analyzer,
    out,
)
from faceledger.cli.session import session


def search(
    photos: Annotated[
        list[Path],
        typer.Argument(
            help="Probe photo, or a video clip; or 2 to 10 photos of one person with "
            "--same-person.",
            show_default=False,
        ),
    ],
    case: Annotated[str, typer.Option("--case", help="Case number (required).")] = "",
    purpose: Annotated[str, typer.Option(help="Purpose, from the policy's list (required).")] = "",
    justification: Annotated[str, typer.Option(help="Why this search is needed (required).")] = "",
    request: Annotated[
        int | None, typer.Option("--request", help="Approved case request id, where needed.")
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", min=1, max=1000, help="Candidates per face.")
    ] = 10,
    face_box: Annotated[
        list[str] | None,
        typer.Option(
            "--face-box",
            metavar="[N:]X0,Y0,X1,Y1",
            help="Search only this face (photo pixels: left,top,right,bottom). A box that "
            "picks none of the faces the detector finds is searched as a face marked by hand. "
            "With several photos, N: names the photo (1-based), once per photo that needs one.",
        ),
    ] = None,
    same_person: Annotated[
        bool,
        typer.Option(
            "--same-person",
            help="Several photos show one person: their faces are fused into one probe.",
        ),
    ] = False,
    track: Annotated[
        int | None,
        typer.Option(
            "--track",
            min=1,
            help="A video probe showing several people: the track (person) to search, from "
            "the list a search without --track prints.",
        ),
    ] = None,
    model_dir: ModelDir = None,
    device: Device = "cpu",
    data_dir: DataDir = None,
    as_user: AsUser = None,
    as_json: JsonOut = False,
) -> None:
    """Find the faces in PHOTO and list ranked gallery candidates for each (investigator).

    PHOTO may be a video clip (MP4, MOV, MKV, WebM, AVI): faces are tracked across sampled
    frames and a track's best faces are searched as one probe. With several people in the
    clip the tracks are listed (exit code 7) for a search again with --track N. Several
    photos of one person (--same-person): one face from each (its only face, or the one
    --face-box N:... picks) fused into one probe."""
    from faceledger.core import SearchRequest
    from faceledger.search.searcher import LEADS_NOTICE, NoFaceError
    from faceledger.vision.video import VideoError

    if len(photos) > 1 and not same_person:
        fail(
            f"several-probes: {len(photos)} photos; add --same-person to search them as one "
            "person's photos fused, or search each on its own"
        )
    boxes = photo_boxes(face_box or [], len(photos))
    datas = []
    for photo in photos:
        try:
            datas.append(photo.read_bytes())
        except OSError as exc:
            fail(f"{photo}: cannot read probe ({exc.strerror or exc})")
    req = SearchRequest(case, purpose, justification, request, top_k)
    probe = photos[0] if len(photos) == 1 else ", ".join(str(p) for p in photos)
    with session(data_dir, as_user, model_dir=model_dir, device=device) as (fl, actor):
        video = len(datas) == 1 and fl.is_video(datas[0])
        box = boxes[0] if len(boxes) == 1 else None
        if video and box is not None:
            fail("bad-face-box: --face-box picks a face in a photo; in a video, use --track")
        if not video and track is not None:
            fail(f"bad-track: --track picks a person in a video; {probe} is no video")
        try:
            if len(datas) > 1:
                result = fl.search_photos(actor, datas, req, boxes)
            elif video:
                result = fl.search_video(actor, datas[0], req, track)
            else:
                result = fl.search(actor, datas[0], req, box)
        except NoFaceError as exc:
            if as_json:
                dump({"probe": str(probe), "faces": [], "error": str(exc)})
            fail(f"{probe}: {exc}", code=NO_FACE_EXIT)
        except VideoError as exc:
            fail(f"{probe}: {exc.reason}: {exc}")
    if as_json:
        dump(result)
        if result["search_id"] is None:
            raise typer.Exit(CHOOSE_TRACK_EXIT)
        return
    if result["search_id"] is None:
        print_tracks(photos[0], result)
        raise typer.Exit(CHOOSE_TRACK_EXIT)
    out.print(f"[bold yellow]{LEADS_NOTICE}[/]")
    out.print(
        f"search {result['search_id']} for case {result['case_number']} ({result['purpose']}): "
        f"probe {probe}, {len(result['faces'])} face(s), gallery of {result['gallery_faces']} faces"
    )
    print_picked(result["picked"])
    print_video(result.get("video"))
    print_photos(result.get("photos"))
    print_faces(result["faces"])


def photo_boxes(texts: list[str], photos: int) -> list[list[int] | None]:
    """One face box (or None) per photo from ``--face-box`` values: ``X0,Y0,X1,Y1`` for one
    photo, ``N:X0,Y0,X1,Y1`` (photo N, 1-based) with several."""
    from faceledger.vision.probes import BadBoxError, parse_box

    boxes: list[list[int] | None] = [None] * photos
    for text in texts:
        number, sep, rest = text.partition(":")
        if not sep:
            if photos > 1:
                fail(
                    f"bad-face-box: with several photos, write --face-box N:X0,Y0,X1,Y1 ({text!r})"
                )
            number, rest = "1", text
        n = int(number) if number.strip().isdigit() else 0
        if not 1 <= n <= photos:
            fail(f"bad-face-box: {text!r} names no photo (1 to {photos})")
        if boxes[n - 1] is not None:
            fail(f"bad-face-box: photo {n} has two face boxes")
        try:
            boxes[n - 1] = parse_box(rest, "--face-box")
        except BadBoxError as exc:
            fail(f"bad-face-box: {exc}")
    return boxes


def print_photos(photos: list[dict[str, Any]] | None) -> None:
    """The photos of a same-person probe: the face each gave, and whether it was fused."""
    if not photos:
        return
    t = Table(title=f"{len(photos)} photos of one person, fused into one probe")
    for col in ("photo", "SHA-256", "face", "quality", "fused"):
        t.add_column(col, overflow="fold")
    for p in photos:
        how = " (marked by hand)" if p["marked_by_hand"] else ""
        t.add_row(
            str(p["photo"]),
            p["sha256"][:16],
            f"{p['bbox']} of {p['faces_in_photo']} found{how}",
            f"{p['quality']:.2f}",
            "yes" if p["fused"] else "no: below the minimum quality",
        )
    out.print(t)


def print_tracks(clip: Path, result: dict[str, Any]) -> None:
    """The people (tracks) in a video probe, to choose one with --track."""
    video = result["video"]
    t = Table(
        title=f"{clip}: {len(result['tracks'])} people (tracks) in the frames sampled "
        f"({len(video['frames_sampled'])} frames, {video['fps_sampled']:g} a second); nothing "
        "was compared"
    )
    for col in ("track", "frames", "faces", "best face (frame, box)", "quality"):
        t.add_column(col, overflow="fold")
    for tr in result["tracks"]:
        low = " [below minimum]" if tr["below_min_quality"] else ""
        t.add_row(
            str(tr["track"]),
            f"{tr['first_frame']}-{tr['last_frame']}",
            str(tr["faces"]),
            f"frame {tr['best_frame']} at {tr['bbox']}",
            f"{tr['quality']:.2f}{low}",
        )
    out.print(t)
    out.print(f"search again with [bold]--track N[/] to search one (video {video['sha256']})")


def print_video(video: dict[str, Any] | None) -> None:
    """Which track of a video probe was searched, and from which frames."""
    if not video or video.get("track") is None:
        return
    used = ", ".join(str(n) for n in video["frames_used"]) or "none"
    out.print(
        f"video {video['sha256']}: track {video['track']} of {video['tracks']} (frames "
        f"{video['track_first_frame']}-{video['track_last_frame']}); faces of frames {used} "
        "fused into the probe"
    )


def print_picked(picked: dict[str, Any] | None) -> None:
    """Which face a search with a face box searched, where it was marked by hand."""
    if picked and picked.get("marked_by_hand"):
        box = ", ".join(str(v) for v in picked["box"])
        out.print(
            f"[bold]face marked by hand[/] (box {box}): no detector found it; landmarks "
            "were fitted inside the box"
        )


def print_subjects(face: dict[str, Any]) -> None:
    """A probe face's subjects (#14), ranked by template score, as a table."""
    subjects = face.get("subjects")
    if not subjects:
        return
    t = Table(title=f"face {face['face_index']}: subjects (template of each subject's faces)")
    for col in ("rank", "subject", "faces", "score", "est. FMR", "expected false ≥ score"):
        t.add_column(col, overflow="fold")
    for s in subjects:
        ids = ", ".join(str(i) for i in s["face_ids"][:8])
        more = f" (+{len(s['face_ids']) - 8})" if len(s["face_ids"]) > 8 else ""
        t.add_row(
            str(s["rank"]),
            escape(s["label"] if s["label"] is not None else f"{s['subject']} (unlabelled)"),
            f"{s['size']}: {ids}{more}",
            f"{s['score']:.3f}",
            fmr_text(s),
            count_text(s["expected_false_subjects"])
            + (" (chance level)" if s.get("chance_level") else ""),
        )
    out.print(t)


def print_faces(faces: list[dict[str, Any]]) -> None:
    """Each probe face and its candidates, as a table (a search, or a search record)."""
    for f in faces:
        if f["below_min_quality"]:
            out.print(
                f"face {f['face_index']} at {f['bbox']}: quality {f['quality']:.2f} is "
                "below the policy minimum; not searched"
            )
            continue
        t = Table(title=f"face {f['face_index']} at {f['bbox']} (quality {f['quality']:.2f})")
        for col in ("rank", "score", "est. FMR", "expected false ≥ score", "face id", "provenance"):
            t.add_column(col, overflow="fold")
        for c in f["candidates"]:
            p = c["provenance"][0] if c["provenance"] else {}
            where = p.get("source_url") or Path(p.get("original_path") or "").name
            label = f"{p.get('subject_label')}: " if p.get("subject_label") else ""
            erased = " [erased since]" if c.get("erased") else ""
            if c.get("review"):
                erased += f" [{c['review']['status']}]"
            t.add_row(
                str(c["rank"]),
                f"{c['score']:.3f}",
                fmr_text(c),
                count_text(c["expected_false_candidates"]),
                str(c["face_id"]) + erased,
                escape(f"{label}{where} ({p.get('source', '')}; {p.get('legal_basis', '')})"),
            )
        out.print(t)
        print_subjects(f)
    out.print("[dim]* estimated beyond the calibration data (extrapolated tail)[/]")


searches_app = typer.Typer(help="Search records: list and show.", no_args_is_help=True)


@searches_app.command("list")
def searches_list(
    case: Annotated[str | None, typer.Option("--case", help="Only this case.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 200,
    data_dir: DataDir = None,
    as_user: AsUser = None,
    as_json: JsonOut = False,
) -> None:
    """The searches you may read, newest first (investigators their own; supervisors their
    unit's and those under their approvals; auditors all)."""
    with session(data_dir, as_user) as (fl, actor):
        rows = fl.list_searches(actor, case, limit)
    if as_json:
        dump(rows)
        return
    t = Table(title=f"{len(rows)} search(es)")
    for col in ("id", "when", "by", "case", "purpose", "faces", "candidates"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(
            str(r["id"]),
            r["created_at"],
            escape(r["username"]),
            escape(r["case_number"]),
            escape(r["purpose"]),
            str(r["faces"]),
            str(r["candidates"]),
        )
    out.print(t)


@searches_app.command("show")
def searches_show(
    search_id: Annotated[int, typer.Argument(help="The search's id.")],
    data_dir: DataDir = None,
    as_user: AsUser = None,
    as_json: JsonOut = False,
) -> None:
    """A search as it was shown: probe faces, candidates with scores, estimated FMRs,
    expected false candidates and provenance (each view is recorded)."""
    from faceledger.search.searcher import LEADS_NOTICE

    with session(data_dir, as_user) as (fl, actor):
        rec = fl.get_search(actor, search_id)
    if as_json:
        dump(rec)
        return
    shown = rec["shown"]
    out.print(f"[bold yellow]{LEADS_NOTICE}[/]")
    out.print(
        f"search {rec['id']} by {escape(rec['username'])} at {rec['created_at']}: case "
        f"{escape(rec['case_number'])} ({escape(rec['purpose'])}), request "
        f"{rec['request_id'] or '-'}; probe {rec['probe_sha256']}, {rec['faces']} face(s)"
    )
    out.print(f"justification: {escape(rec['justification'])}")
    if not rec["results_viewable"]:
        out.print(
            f"[dim]the candidates' photos could be opened for {rec['result_view_days']} days "
            "after the search[/]"
        )
    if shown is None:  # stored before search records kept what they showed
        for f in rec["results"]:
            pairs = ", ".join(f"{fid} ({score:.3f})" for fid, score in f["candidates"])
            out.print(f"face {f['face']}: {pairs or 'no candidates'}")
        return
    out.print(
        f"gallery of {shown['gallery_faces']} faces, model {shown['model_id']}, calibration "
        f"{shown['calibration'] or 'none'}, policy {shown['policy_sha256'][:16]}"
    )
    print_picked(shown.get("picked"))
    print_video(shown.get("video"))
    print_photos(shown.get("photos"))
    print_faces(shown["faces"])


def embed(
    photo: Annotated[Path, typer.Argument(help="Photo to analyse.")],
    detector: Detector = "hog",
    embedder: Embedder = "default",
    min_face: MinFace = 20,
    model_dir: ModelDir = None,
    device: Device = "cpu",
    as_json: JsonOut = True,
) -> None:
    """Faces found in PHOTO: box, 5 landmarks, quality and embedding (touches no gallery)."""
    from faceledger.vision.decode import DecodeError, decode_image
    from faceledger.vision.embedding import DEFAULT_EMBEDDER

    embedder = DEFAULT_EMBEDDER if embedder == "default" else embedder
    try:
        img = decode_image(photo.read_bytes())
    except OSError as exc:
        fail(f"{photo}: cannot read ({exc.strerror or exc})")
    except DecodeError as exc:
        fail(f"{photo}: {exc}")
    analyzer = make_analyzer(detector, embedder, min_face, model_dir=model_dir, device=device)
    faces = analyzer.analyze(img.pixels)
    dump(
        {
            "photo": str(photo),
            "width": img.width,
            "height": img.height,
            "model_id": analyzer.model_id,
            "faces": [
                {
                    "bbox": f.detection.bbox.as_list(),
                    "detector": f.detection.detector,
                    "det_score": f.detection.score,
                    "landmarks": f.detection.landmarks.tolist(),
                    "quality": f.quality,
                    "size": f.size,
                    "sharpness": round(f.sharpness, 3),
                    "yaw": round(f.yaw, 4),
                    "embedding": [round(float(x), 7) for x in f.embedding],
                }
                for f in faces
            ],
        }
    )
    if not faces:
        raise typer.Exit(NO_FACE_EXIT)
