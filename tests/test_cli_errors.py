"""The CLI tells user errors (one line, exit 1) from bugs (traceback plus a line saying it is a bug)."""
from __future__ import annotations

import pytest

from helpers import assert_one_line_error, cli
from workbench.errors import DamagedFileError, InputError, UserError


@pytest.fixture()
def failing_report(monkeypatch):
    """Make `workbench report` raise whatever the test sets in ``box[0]``."""
    import workbench.training.summary as summary
    box: list[BaseException] = []

    def boom(*args, **kwargs):
        raise box[0]
    monkeypatch.setattr(summary, "format_report", boom)
    return box


def test_user_error_is_one_line(tmp_path, capsys, failing_report):
    (tmp_path / "metrics.jsonl").write_text("")
    failing_report.append(InputError("the thing you passed is wrong; pass another"))
    code, _, err = cli(capsys, "report", tmp_path)
    assert_one_line_error(code, err, "the thing you passed is wrong")


def test_bug_keeps_its_traceback(tmp_path, capsys, failing_report):
    (tmp_path / "metrics.jsonl").write_text("")
    failing_report.append(KeyError("internal_key"))   # a KeyError from inside is a bug, not a typo
    code, _, err = cli(capsys, "report", tmp_path)
    assert code == 1
    assert "Traceback" in err and "internal_key" in err and "is a bug in the workbench" in err


def test_user_errors_are_also_builtin_errors():
    assert issubclass(InputError, ValueError) and issubclass(DamagedFileError, ValueError)
    assert issubclass(InputError, UserError)
