"""Files for the whole project: written whole or not at all (a reader, or a run killed
mid-write, never sees half a file), and JSON Lines read with the bad line named."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
    """`data` at `path` by a rename of a synced file beside it."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> None:
    """`records` as UTF-8 JSON Lines, one object a line, written atomically."""
    write_atomically(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The records of a JSON Lines file (blank lines skipped); a line that is not JSON is a
    ValueError naming the file and the line."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
    return records
