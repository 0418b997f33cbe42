"""Settings resolution: command-line flag, then environment, then default."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = "./faceledger-data"


def data_dir(flag: Path | None) -> Path:
    """``--data-dir``, else ``$FACELEDGER_DATA``, else ``./faceledger-data``."""
    if flag is not None:
        return Path(flag)
    return Path(os.environ.get("FACELEDGER_DATA") or DEFAULT_DATA_DIR)
