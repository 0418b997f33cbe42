"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis), as an admin and as an
investigator, against a small seeded data dir.

Every operation in ``/openapi.json`` gets generated requests, valid and invalid (positive
and negative generation), each sent twice: with the admin's bearer token and with the
investigator's. The checks: no 5xx, and every response conforms to the schema (a documented
status code, the documented content type and body schema).

Nothing is excluded. Operations that could lock the fuzzer out of its own data dir are
pointed at a sacrificial target instead: ``PATCH /users/{username}`` at the user ``fuzzee``
when it names one of the users whose tokens the fuzzer sends, and ``DELETE
/tokens/{token_id}`` at fuzzee's token when it names one of those tokens (the bodies stay as
generated). Erasures, purges, ingests and policy changes run against the shared data dir as
generated: they may empty the gallery, which the other operations must survive too.

Runs derandomised (the same examples every run, about 20 s). For a longer local hunt:
``FACELEDGER_FUZZ_EXAMPLES=200 FACELEDGER_FUZZ_RANDOM=1 pytest tests/http/test_fuzz_api.py``.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import need_module

schemathesis = need_module("schemathesis", "pip install -e '.[dev]' (schemathesis)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig  # noqa: E402

from conftest_api import PW, own_token, seed  # noqa: E402
from faceledger.core import Faceledger  # noqa: E402
from faceledger.http.app import create_app  # noqa: E402
from faceledger.http.routes import router  # noqa: E402
from faceledger.http.settings import MB, ApiSettings  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests another httpx package; irrelevant here
    from fastapi.testclient import TestClient

EXAMPLES = int(os.environ.get("FACELEDGER_FUZZ_EXAMPLES", "12"))
RANDOM = os.environ.get("FACELEDGER_FUZZ_RANDOM", "") not in ("", "0")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CALLERS = ("root", "ivy")  # admin, investigator
SACRIFICE = "fuzzee"

CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {
            "mode": "all",  # valid and invalid requests
            # the fuzzer sends real credentials itself; generated ones would replace them
            "with-security-parameters": False,
        },
    }
)


@dataclass
class FuzzEnv:
    fl: Faceledger
    app: Any
    tokens: dict[str, str]
    token_ids: dict[str, int]

    def h(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


@pytest.fixture(scope="module")
def fuzz_env(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("fuzz")
    fl = seed(lfw, base, analyzer)
    root = fl.login("root", PW)
    fl.add_user(root, SACRIFICE, PW, "investigator", "north")
    tokens, token_ids = {}, {}
    for user in (*CALLERS, SACRIFICE, "ada"):
        token_ids[user], tokens[user] = own_token(fl, user, "fuzz")
    settings_ = ApiSettings(
        max_upload_bytes=2 * MB,
        max_ingest_upload_bytes=4 * MB,
        rate_per_minute=0,  # no rate limits: the fuzzer is one fast client
        search_rate_per_minute=0,
        login_rate_per_minute=0,
    )
    app = create_app(fl.data_dir, faceledger=fl, settings=settings_)
    yield FuzzEnv(fl, app, tokens, token_ids)
    app.state.ctx.jobs.shutdown(timeout=60)


@pytest.fixture(scope="module")
def api_schema(fuzz_env: FuzzEnv) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_env.app, config=CONFIG)


# Operations from the router itself (known at collection time). Those that change the
# gallery for everyone run last, so the others first see the seeded gallery.
LAST = [("POST", "/api/v1/ingest"), ("POST", "/api/v1/erasures"), ("POST", "/api/v1/purge")]
# A route's path as OpenAPI writes it: a parameter that takes the rest of the path (a case
# number with slashes, ``{case_number:path}``) is a plain ``{case_number}`` there.
OPERATIONS = (
    sorted(
        {
            (m, re.sub(r"\{(\w+):path\}", r"{\1}", r.path))
            for r in router.routes
            for m in getattr(r, "methods", ())
        }
        - set(LAST)
    )
    + LAST
)


def _protect_credentials(case: Any, env: FuzzEnv) -> None:
    """Point operations that would lock the fuzzer out at the sacrificial user/token."""
    label = f"{case.method.upper()} {case.path}"
    params = case.path_parameters
    if label == "PATCH /api/v1/users/{username}" and params.get("username") in CALLERS:
        params["username"] = SACRIFICE
    if label == "DELETE /api/v1/tokens/{token_id}" and params.get("token_id") in {
        env.token_ids[u] for u in CALLERS
    }:
        params["token_id"] = env.token_ids[SACRIFICE]


# -- what fuzzing found, pinned down: each of these was a 500 (the policy values: accepted,
# then every search or ingest failed with one) ------------------------------------------------

BIG = str(2**63)  # one past the largest database id
REGRESSIONS = [
    # (user, method, url, request kwargs, status, code)
    ("ivy", "GET", f"/api/v1/searches/{BIG}", {}, 422, "invalid-request"),
    ("ivy", "GET", f"/api/v1/searches/1/faces/{BIG}/crop", {}, 422, "invalid-request"),
    ("root", "DELETE", f"/api/v1/tokens/{BIG}", {}, 422, "invalid-request"),
    ("ivy", "POST", f"/api/v1/cases/{BIG}/approve", {}, 422, "invalid-request"),
    ("root", "POST", "/api/v1/erasures", {"data": {"face_ids": f"1,{BIG}"}}, 400, "bad-face-ids"),
    *[
        (
            "ivy",
            "POST",
            "/api/v1/searches",
            {
                "data": {
                    "case_number": "C-1",
                    "purpose": "identity-fraud",
                    "justification": "a long enough reason",
                    "request_id": rid,
                },
                "files": {"probe": ("p.jpg", b"not read", "image/jpeg")},
            },
            400,
            "bad-request-id",
        )
        for rid in (BIG, "\u00b2")  # too big for the database; "²" (isdigit, but not int)
    ],
    *[
        (
            "ivy" if path == "/api/v1/cases" else "root",
            "POST",
            path,
            {"content": body},
            400,
            "bad-text",
        )
        for path, body in (
            ("/api/v1/cases", b'{"case_number": "C\\ud800", "purpose": "violent-crime"}'),
            ("/api/v1/tokens", b'{"name": "\\udfff"}'),
            # NUL: PostgreSQL cannot store it, so both databases refuse it alike
            ("/api/v1/tokens", b'{"name": "a\\u0000b"}'),
            ("/api/v1/cases", b'{"case_number": "C-\\u0000", "purpose": "violent-crime"}'),
        )
    ],
    ("ivy", "GET", "/api/v1/audit/entries?to=9999-12-31", {}, 403, "permission-denied"),
    ("ada", "GET", "/api/v1/audit/entries?to=9999-12-31&limit=1", {}, 200, None),
    ("ada", "GET", "/api/v1/audit/report?from=0001-01-01&to=9999-12-31", {}, 200, None),
    *[
        ("root", "PATCH", "/api/v1/policy", {"json": {key: 10**15}}, 400, "invalid-policy")
        for key in ("retain_probes_days", "image_retention_days")
    ],
]


@pytest.mark.parametrize(
    ("user", "method", "url", "kwargs", "status", "code"),
    REGRESSIONS,
    ids=[f"{r[1]} {r[2][:40]} {r[5]}" for r in REGRESSIONS],
)
def test_inputs_that_once_crashed_the_server(
    fuzz_env: FuzzEnv,
    user: str,
    method: str,
    url: str,
    kwargs: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    with TestClient(fuzz_env.app, raise_server_exceptions=False) as client:
        headers = fuzz_env.h(user)
        if "content" in kwargs:
            headers["Content-Type"] = "application/json"
        r = client.request(method, url, headers=headers, **kwargs)
    assert r.status_code == status, r.text
    if code is not None:
        assert r.json()["code"] == code, r.text


def test_refused_policy_values_change_nothing(fuzz_env: FuzzEnv) -> None:
    """A retention too long to compute an expiry date for is refused up front, rather than
    accepted and then failing every search (probes) or every ingest (images)."""
    with TestClient(fuzz_env.app) as client:
        h = fuzz_env.h("root")
        before = client.get("/api/v1/policy", headers=h).json()
        r = client.patch("/api/v1/policy", headers=h, json={"retain_probes_days": 36_501})
        assert r.status_code == 400 and "36500" in r.json()["message"]
        assert client.get("/api/v1/policy", headers=h).json() == before
        r = client.patch("/api/v1/policy", headers=h, json={"retain_probes_days": 36_500})
        assert r.status_code == 200, r.text
        assert client.put("/api/v1/policy", headers=h, json=before).status_code == 200


# -- the fuzzing ---------------------------------------------------------------------------------


def test_the_schema_lists_every_operation(api_schema: Any) -> None:
    in_schema = {
        (op.method.upper(), op.path) for op in (r.ok() for r in api_schema.get_all_operations())
    }
    assert in_schema == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_fuzz(method: str, path: str, api_schema: Any, fuzz_env: FuzzEnv) -> None:
    op = api_schema[path][method]
    strategy = st.one_of(
        op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)
    )

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        _protect_credentials(case, fuzz_env)
        for user in CALLERS:
            case.call_and_validate(headers=fuzz_env.h(user), checks=CHECKS)

    run()


def test_fuzzer_credentials_survived(fuzz_env: FuzzEnv) -> None:
    """The fuzz run above must have run as admin and investigator throughout."""
    for user in CALLERS:
        assert fuzz_env.fl.authenticate_token(fuzz_env.tokens[user], record_use=False)
    assert fuzz_env.fl.audit_verify(fuzz_env.fl.login("root", PW)).ok
