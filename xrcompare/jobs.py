"""Training jobs run as subprocesses, with progress files on disk (no Streamlit here)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path


def progress_file_writer(path: str | Path) -> Callable[[dict], None]:
    """A progress hook that appends one JSON line per event (flushed, so readers see it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(event: dict) -> None:
        line = json.dumps({"time": time.time(), **event}, default=str)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    return write
