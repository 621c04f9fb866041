"""``metrics.jsonl``: one JSON object per logged step, appended and flushed line by line.

The trainer writes it here (``MetricsLog``); reading it back is ``workbench.run_files.read_metrics``
(re-exported here), the one reader that analysis, figures and reports share.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from workbench.run_files import parse_metrics_lines, read_metrics

__all__ = ["MetricsLog", "read_metrics"]


class MetricsLog:
    """Append-only JSON-lines log. ``truncate_after(step)`` drops lines a killed run wrote past its checkpoint."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled
        self._fh: Optional[Any] = None

    def truncate_after(self, step: int) -> None:
        """Keep only complete lines with ``step <= step`` (a half-written last line is dropped too)."""
        if not self.enabled or not self.path.exists():
            return
        rows = parse_metrics_lines(self.path.read_text(encoding="utf-8"), str(self.path))
        kept = [json.dumps(row) + "\n" for row in rows if row.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled or not row:
            return
        if self._fh is None:
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
