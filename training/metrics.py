"""``metrics.jsonl``: one JSON object per logged step, appended and flushed line by line."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional


class MetricsLog:
    """Append-only JSON-lines log. ``truncate_after(step)`` drops lines a killed run wrote past its checkpoint."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled
        self._fh: Optional[Any] = None

    def truncate_after(self, step: int) -> None:
        """Keep only complete lines with ``step <= step`` (a half-written last line is dropped too)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled or not row:
            return
        if self._fh is None:
            self._fh = self.path.open("a")
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a ``metrics.jsonl``."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows
