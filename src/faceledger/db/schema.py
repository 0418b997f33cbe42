"""Every table faceledger keeps, in one SQLAlchemy ``MetaData``.

Gallery tables (images, provenance, faces) are the source of truth for search; the vector
index is derived from ``faces``. Accountability tables (users, tokens, case requests,
searches, the ledger) live in the same database so that one transaction can change the
gallery and record that it did. The ledger is append-only: triggers refuse UPDATE and DELETE.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# 2: nullable columns added to existing tables (users.username_key, case_requests'
#    expiry/limit/withdrawal) and new tables; a schema-1 database is brought up to date
#    when a Store opens it (store.add_missing_columns).
# 3: searches.shown_json (the search as it was shown: probe faces, candidates with their
#    scores, estimates and provenance, model, calibration and policy versions)
# 4: reviews (candidate decisions by a first and a blind second examiner) and case_notes
# 5: web_sessions, rate_buckets and jobs: what several API servers on one gallery share
SCHEMA_VERSION = 5

# 64-bit integers everywhere, as SQLite's are: BIGINT on PostgreSQL, while SQLite keeps
# INTEGER (so an INTEGER PRIMARY KEY stays the rowid alias).
Int = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

sources = Table(
    "sources",
    metadata,
    Column("id", Int, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", String(40), nullable=False),
)

ingest_runs = Table(
    "ingest_runs",
    metadata,
    Column("id", Int, primary_key=True),
    Column("started_at", String(40), nullable=False),
    Column("finished_at", String(40)),
    Column("status", String(20), nullable=False),  # running | done | interrupted
    Column("args_json", Text, nullable=False),
    Column("summary_json", Text),
)

images = Table(
    "images",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("width", Int, nullable=False),
    Column("height", Int, nullable=False),
    Column("format", String(16), nullable=False),
    Column("byte_size", Int, nullable=False),
    Column("stored_path", Text, nullable=False),  # relative to the data dir
    Column("face_count", Int, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("expires_at", String(40)),
)

provenance = Table(
    "provenance",
    metadata,
    Column("id", Int, primary_key=True),
    Column("image_sha", String(64), ForeignKey("images.sha256", ondelete="CASCADE"), index=True),
    Column("source_id", Int, ForeignKey("sources.id"), nullable=False),
    Column("original_path", Text, nullable=False),
    Column("source_url", Text),
    Column("captured_at", String(40)),
    Column("legal_basis", Text, nullable=False),
    # the person the source says the photo shows (gallery/subjects.py: who is which subject)
    Column("subject_label", Text, index=True),
    Column("ingest_run_id", Int, ForeignKey("ingest_runs.id")),
    Column("created_at", String(40), nullable=False),
    UniqueConstraint("image_sha", "source_id", "original_path"),
)

faces = Table(
    "faces",
    metadata,
    Column("id", Int, primary_key=True),
    Column("image_sha", String(64), ForeignKey("images.sha256", ondelete="CASCADE"), index=True),
    Column("face_index", Int, nullable=False),
    Column("bbox_json", Text, nullable=False),
    Column("landmarks_json", Text, nullable=False),
    Column("det_score", Float, nullable=False),
    Column("detector", String(32), nullable=False),
    Column("quality", Float, nullable=False),
    Column("size", Int, nullable=False),
    Column("sharpness", Float, nullable=False),
    Column("yaw", Float, nullable=False),
    Column("model_id", String(64), nullable=False),
    Column("embedding", LargeBinary, nullable=False),  # float32 little-endian, L2-normalised
    Column("crop_path", Text, nullable=False),
    Column("created_at", String(40), nullable=False),
    UniqueConstraint("image_sha", "face_index"),
    sqlite_autoincrement=True,  # never reuse an erased face's id
)


subject_relabels = Table(
    "subject_relabels",
    metadata,
    # Subjects merged by an admin (gallery/subjects.py), never deleted: kind "label" moves
    # every face of label ``source`` to ``target_label``; kind "face" moves face ``source``
    # (its id) to ``target_label``. The provenance rows keep what their source said; the
    # latest row for a (kind, source) wins. Each row is a ledger entry (``subject.merge``).
    Column("id", Int, primary_key=True),
    Column("kind", String(10), nullable=False),  # label | face
    Column("source", Text, nullable=False, index=True),
    Column("target_label", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("user_id", Int, ForeignKey("users.id"), nullable=False),
    Column("ledger_seq", Int),
    Column("created_at", String(40), nullable=False),
)


face_tombstones = Table(
    "face_tombstones",
    metadata,
    # ids of erased faces (no biometric data), so indexes can drop them without a rebuild
    Column("face_id", Int, primary_key=True),
    Column("delete_generation", Int, nullable=False, index=True),
    Column("deleted_at", String(40), nullable=False),
)


users = Table(
    "users",
    metadata,
    Column("id", Int, primary_key=True),
    Column("username", String(100), nullable=False, unique=True),
    # NFKC + case-folded form of the name: two names that look alike share it (one letter
    # can take 3 characters there, so a 64-character name's key up to 192)
    Column("username_key", String(200), index=True),
    Column("password_hash", Text, nullable=False),  # argon2id
    Column("roles", String(200), nullable=False),  # comma-separated
    Column("unit", String(100)),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("failed_logins", Int, nullable=False, default=0),
    Column("locked_until", String(40)),
    Column("created_at", String(40), nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Int, primary_key=True),
    Column("user_id", Int, ForeignKey("users.id"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),  # SHA-256 of the secret
    Column("name", String(100), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("expires_at", String(40), nullable=False),
    Column("revoked_at", String(40)),
    Column("last_used_at", String(40)),
)

case_requests = Table(
    "case_requests",
    metadata,
    Column("id", Int, primary_key=True),
    Column("case_number", String(100), nullable=False, index=True),
    Column("purpose", String(100), nullable=False),
    Column("justification", Text, nullable=False),
    Column("requested_by", Int, ForeignKey("users.id"), nullable=False),
    Column("status", String(20), nullable=False),  # pending | approved | denied
    Column("decided_by", Int, ForeignKey("users.id")),
    Column("decided_at", String(40)),
    Column("decision_note", Text),
    Column("created_at", String(40), nullable=False),
    # an approval ends: at expires_at, after search_limit searches, or when withdrawn
    Column("expires_at", String(40)),
    Column("search_limit", Int),
    Column("withdrawn_by", Int, ForeignKey("users.id")),
    Column("withdrawn_at", String(40)),
    Column("withdrawal_note", Text),
)

searches = Table(
    "searches",
    metadata,
    Column("id", Int, primary_key=True),
    Column("user_id", Int, ForeignKey("users.id"), nullable=False, index=True),
    Column("case_number", String(100), nullable=False),
    Column("purpose", String(100), nullable=False),
    Column("justification", Text, nullable=False),
    Column("request_id", Int, ForeignKey("case_requests.id")),
    Column("probe_sha256", String(64), nullable=False),
    Column("faces", Int, nullable=False),
    Column("result_json", Text, nullable=False),  # candidate ids and scores, no biometrics
    Column("created_at", String(40), nullable=False),
    # Everything the search showed, as canonical JSON (no biometrics, no server paths);
    # its SHA-256 is in the search's ledger entry. NULL for searches before schema 3.
    Column("shown_json", Text),
)

verifications = Table(
    "verifications",
    metadata,
    # 1:1 comparisons: counted in the quota like searches, cross-checked by audit verify
    Column("id", Int, primary_key=True),
    Column("user_id", Int, ForeignKey("users.id"), nullable=False, index=True),
    Column("case_number", String(100), nullable=False),
    Column("purpose", String(100), nullable=False),
    Column("justification", Text, nullable=False),
    Column("request_id", Int, ForeignKey("case_requests.id")),
    Column("photo_a_sha256", String(64), nullable=False),
    Column("photo_b_sha256", String(64), nullable=False),
    Column("outcome", String(20), nullable=False),  # compared | no-face | low-quality
    Column("score", Float),
    Column("created_at", String(40), nullable=False),
)

reviews = Table(
    "reviews",
    metadata,
    # An examiner's decision on one candidate of one search. A candidate is (search_id,
    # face_id); stage "first" is the investigator's, "second" a different investigator's,
    # recorded without seeing the first (blind verification). A possible-lead is a lead
    # only when both stages decided possible-lead; the two stages never have one examiner.
    Column("id", Int, primary_key=True),
    Column("search_id", Int, ForeignKey("searches.id"), nullable=False, index=True),
    Column("face_id", Int, nullable=False),  # the gallery face (no FK: it may be erased)
    Column("stage", String(10), nullable=False),  # first | second
    Column("examiner_id", Int, ForeignKey("users.id"), nullable=False),
    Column("decision", String(20), nullable=False),  # excluded | inconclusive | possible-lead
    Column("reason", Text, nullable=False),
    Column("ledger_seq", Int),  # the ledger entry that recorded it
    Column("created_at", String(40), nullable=False),
    UniqueConstraint("search_id", "face_id", "stage"),
)

case_notes = Table(
    "case_notes",
    metadata,
    # free-text notes on a case, by the people working it; each is also a ledger entry
    Column("id", Int, primary_key=True),
    Column("case_number", String(100), nullable=False, index=True),
    Column("user_id", Int, ForeignKey("users.id"), nullable=False),
    Column("text", Text, nullable=False),
    Column("ledger_seq", Int),
    Column("created_at", String(40), nullable=False),
)

ledger = Table(
    "ledger",
    metadata,
    Column("seq", Int, primary_key=True, autoincrement=False),
    Column("ts", String(40), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(50), nullable=False, index=True),
    Column("target", Text, nullable=False),
    Column("details", Text, nullable=False),  # canonical JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

blocklist = Table(
    "blocklist",
    metadata,
    # opted-out subjects: embeddings only, never the enrolment photo
    Column("id", Int, primary_key=True),
    Column("model_id", String(64), nullable=False),
    Column("embedding", LargeBinary, nullable=False),
    Column("reference", String(200), nullable=False),  # e.g. erasure request number
    Column("created_at", String(40), nullable=False),
)

probes = Table(
    "probes",
    metadata,
    # probe photos kept only when policy says so, purged after policy.retain_probes_days
    Column("sha256", String(64), primary_key=True),
    Column("stored_path", Text, nullable=False),
    Column("search_id", Int, ForeignKey("searches.id")),
    Column("expires_at", String(40), nullable=False),
)

pending_files = Table(
    "pending_files",
    metadata,
    # file operations that must follow a committed transaction (erasure, blurring); rows
    # left by a crash are finished at the next start, so no erased biometric data lingers
    Column("id", Int, primary_key=True),
    Column("action", String(10), nullable=False),  # delete | replace
    Column("path", Text, nullable=False),  # relative to the data dir
    Column("tmp_path", Text),  # for replace: the new content, already on disk
)

login_failures = Table(
    "login_failures",
    metadata,
    # back-off per (user name key, client address): no account lock anyone can trigger
    Column("username_key", String(200), primary_key=True),
    Column("address", String(100), primary_key=True),
    Column("failures", Int, nullable=False),
    Column("last_failure_at", String(40), nullable=False),
    Column("blocked_until", String(40)),
)

erased_images = Table(
    "erased_images",
    metadata,
    # SHA-256 of every image erased (hash only): the same file is refused at ingest
    Column("sha256", String(64), primary_key=True),
    Column("erased_at", String(40), nullable=False),
    Column("reason", Text, nullable=False),
)

erasure_previews = Table(
    "erasure_previews",
    metadata,
    # erasure by photo: the faces a probe would take, shown to the admin before confirming
    Column("id", Int, primary_key=True),
    Column("user_id", Int, ForeignKey("users.id"), nullable=False),
    Column("probe_sha256", String(64), nullable=False),
    Column("threshold", Float, nullable=False),
    Column("face_ids_json", Text, nullable=False),  # [[face_id, score], ...]
    # the subject's vector, for an opt-out on confirm; cleared when used or expired
    Column("embedding", LargeBinary),
    Column("gallery_faces", Int),  # gallery size when made: expected false matches = N x FMR
    Column("created_at", String(40), nullable=False),
    Column("expires_at", String(40), nullable=False),
    Column("used_at", String(40)),
)


# -- what several API servers on one gallery share (ARCHITECTURE.md, "Several servers") --------

web_sessions = Table(
    "web_sessions",
    metadata,
    # a web UI session: the cookie is its token's secret (only the token's hash is stored);
    # times are seconds since the epoch, on the clock of the server that wrote them
    Column("token_id", Int, ForeignKey("tokens.id"), primary_key=True),
    Column("created", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("flashes_json", Text, nullable=False),  # messages for the next page
)

rate_buckets = Table(
    "rate_buckets",
    metadata,
    # token buckets of the request limits (per user, per search, per login address)
    Column("key", String(200), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("allowed", Boolean, nullable=False),  # whether the last take got a token
)

jobs = Table(
    "jobs",
    metadata,
    # ingest jobs started over HTTP: run by the server that accepted them, seen and
    # cancelled from any server (cancel_requested), alive while heartbeat is recent
    Column("id", String(32), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("started_at", String(40)),
    Column("finished_at", String(40)),
    Column("args_json", Text, nullable=False),
    Column("total", Int),
    Column("done", Int, nullable=False),
    Column("summary_json", Text),
    Column("error_json", Text),
    Column("cancel_requested", Boolean, nullable=False),
    Column("runner", String(200), nullable=False),  # host:pid of the server running it
    Column("heartbeat", Float, nullable=False),
)
