"""A worked case for the lead report and disclosure export tests (#13 items 7 and 8): real
LFW searches under one case number, candidates reviewed by two investigators into a lead, a
disagreement and a possible lead awaiting its second examiner, a search with no lead, a 1:1
verification, an approval and a note; one probe kept under the retention policy, one not."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import lfw_image
from conftest_api import PW, seed
from faceledger.core import Faceledger, SearchRequest

CASE = "CASE-1307"
WHY = "CCTV still from the robbery at the depot"


@dataclass
class WorkedCase:
    fl: Faceledger
    case: str
    lead_search: int  # its probe is kept (retention); its top candidate is a lead
    lead_face: int
    disagreement_face: int
    awaiting_face: int
    quiet_search: int  # no lead; its probe is not kept
    quiet_awaiting_face: int
    verify_id: int
    request_id: int
    faces: dict[int, list[int]] = field(default_factory=dict)  # search -> candidate face ids


def ranked(fl: Faceledger, user: str, sid: int) -> list[int]:
    rec = fl.get_search(fl.login(user, PW), sid)
    return [c["face_id"] for c in rec["shown"]["faces"][0]["candidates"]]


def worked_case(lfw: Path, base: Path, analyzer: Any, case: str = CASE) -> WorkedCase:
    fl = seed(lfw, base, analyzer)
    root = fl.login("root", PW)
    fl.add_user(root, "ivo", PW, "investigator", "north")  # ivy's colleague, second examiner
    fl.save_policy(
        root,
        fl.policy()
        .with_value("daily_quota", "0")
        .with_value("approval_required", "identity-fraud"),
    )
    ivy, ivo, sam = (fl.login(u, PW) for u in ("ivy", "ivo", "sam"))

    # a search whose probe is not kept (retention off), one possible lead never seconded
    quiet = fl.search(
        ivy,
        lfw_image(lfw, "Adrien_Brody", 2).read_bytes(),
        SearchRequest(case, "violent-crime", WHY, top_k=4),
    )["search_id"]
    quiet_faces = ranked(fl, "ivy", quiet)
    fl.review(ivy, quiet, quiet_faces[1], "possible-lead", "similar jaw line, worth a look")

    # an approved request, then a search under it whose probe is kept
    rid = fl.request_case(ivy, case, "identity-fraud", "passport photo of a suspect")
    fl.decide_case(sam, rid, True, "approved for the depot robbery")
    fl.save_policy(root, fl.policy().with_value("retain_probes_days", "30"))
    lead = fl.search(
        ivy,
        lfw_image(lfw, "Al_Gore", 2).read_bytes(),
        SearchRequest(case, "identity-fraud", WHY, request_id=rid, top_k=4),
    )["search_id"]
    faces = ranked(fl, "ivy", lead)
    fl.review(ivy, lead, faces[0], "possible-lead", "same hairline, nose and brow")
    fl.review(ivo, lead, faces[0], "possible-lead", "ear shape and eyebrows agree")
    fl.review(ivy, lead, faces[1], "possible-lead", "similar face shape")
    fl.review(ivo, lead, faces[1], "excluded", "different nose and chin")
    fl.review(ivy, lead, faces[2], "possible-lead", "cannot rule out")
    fl.review(ivy, lead, faces[3], "excluded", "another person")

    v = fl.verify(
        ivy,
        lfw_image(lfw, "Al_Gore", 2).read_bytes(),
        lfw_image(lfw, "Al_Gore", 3).read_bytes(),
        SearchRequest(case, "violent-crime", WHY),
    )
    fl.add_case_note(ivy, case, "Lead passed to the case detective for corroboration.")
    return WorkedCase(
        fl,
        case,
        lead,
        faces[0],
        faces[1],
        faces[2],
        quiet,
        quiet_faces[1],
        int(v["verify_id"]),
        rid,
        {lead: faces, quiet: quiet_faces},
    )
