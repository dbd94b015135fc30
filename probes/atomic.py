"""All-or-nothing folder writes: build in a temp folder beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a temp folder ``OUT/../.NAME.xxxx``; on success it replaces ``out`` by rename.

    On any exception (or a kill) the target is untouched and the temp folder is removed
    (a killed process leaves a ``.NAME.*`` folder that callers may sweep).

    Example:
        >>> with atomic_folder(Path("models/qwen")) as tmp:  # doctest: +SKIP
        ...     (tmp / "config.json").write_text("{}")
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
