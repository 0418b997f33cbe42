"""The ``faceledger`` command line: :data:`app`, assembled from one module per command group.

Each module translates options to calls of the core (:mod:`faceledger.core`) and its answers
to text, JSON and exit codes; :mod:`~faceledger.cli.common` and
:mod:`~faceledger.cli.session` hold what they share. The top-level commands are registered
here, in the order ``faceledger --help`` lists them.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from faceledger.cli import (
    audit,
    casefile,
    cases,
    compare,
    evaluation,
    gallery,
    migrate,
    search,
    serve,
    subjects,
    users,
)
from faceledger.cli.bench import bench_app

__all__ = ["app"]

app = typer.Typer(
    help="faceledger: face search over a lawfully held gallery, with accountability.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    index: Annotated[
        str | None,
        typer.Option(
            "--index",
            envvar="FACELEDGER_INDEX",
            help="Vector index: local FAISS files in the data dir (default), or a Milvus "
            "server milvus://host:port, or a Milvus Lite file *.db.",
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="FACELEDGER_DB",
            help="Gallery database: SQLite in the data dir (default), or a PostgreSQL "
            "database postgresql://user@host/db, which a new data dir records and keeps.",
        ),
    ] = None,
) -> None:
    """faceledger: face search over a lawfully held gallery, with accountability."""
    if index:
        os.environ["FACELEDGER_INDEX"] = index  # read by IndexManager, also in worker processes
    if db:
        os.environ["FACELEDGER_DB"] = db  # read by Store, also in the server and its jobs


for command in (
    users.init,
    gallery.ingest,
    search.search,
    compare.compare,
    search.embed,
    casefile.review,
    gallery.stats,
    gallery.erase,
    gallery.purge,
    serve.serve,
    migrate.migrate,
):
    app.command()(command)

for sub, name in (
    (bench_app, "bench"),
    (evaluation.eval_app, "eval"),
    (evaluation.calibrate_app, "calibrate"),
    (gallery.index_app, "index"),
    (evaluation.datasets_app, "datasets"),
    (users.users_app, "users"),
    (users.tokens_app, "tokens"),
    (cases.policy_app, "policy"),
    (search.searches_app, "searches"),
    (cases.cases_app, "cases"),
    (casefile.reviews_app, "reviews"),
    (subjects.subjects_app, "subjects"),
    (audit.audit_app, "audit"),
    (users.account_app, "account"),
):
    app.add_typer(sub, name=name)
