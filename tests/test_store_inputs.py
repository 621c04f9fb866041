"""What a document is: lines of a .txt, whole code/prose files (newlines kept), folders, JSONL; the
one JSONL reader shared with training's corpus."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_one_line_error, cli
from workbench.errors import InputError
from workbench.store import ActivationStore
from workbench.store.inputs import RowSource, jsonl_texts

CODE = "def f(x):\n    y = x + 1\n    return y\n\n\nclass A:\n    pass\n" * 3


@pytest.fixture()
def tok(tiny_model):
    return tiny_model.tokenizer


def _stream(src: RowSource) -> list[int]:
    return [int(i) for row, _, _ in src.rows() for i in row]


def test_code_file_is_one_document_with_newlines_kept(tmp_path, tok):
    py = tmp_path / "mod.py"
    py.write_text(CODE)
    src = RowSource(py, 8, tokenizer=tok)
    assert src.documents == "file" and src.describe() == "each file one document, packed" and not src.warnings
    ids = tok.encode(CODE) + [tok.bos_token_id]            # one document: one end-of-text, at the end
    n = len(ids) // 8
    assert _stream(src) == ids[: n * 8]
    assert [s for _, s, _ in src.rows()] == [1] * n        # every row comes from document 1


def test_text_lines_mode_and_the_code_warning(tmp_path, tok):
    txt = tmp_path / "code.txt"
    txt.write_text(CODE)
    src = RowSource(txt, 8, tokenizer=tok)
    assert src.documents == "lines"
    assert len(src.warnings) == 1 and "indented, as in code" in src.warnings[0] and "--documents file" in src.warnings[0]
    lines = [ln for ln in CODE.splitlines() if ln]
    stream = [i for ln in lines for i in tok.encode(ln) + [tok.bos_token_id]]
    assert _stream(src) == stream[: len(stream) // 8 * 8]
    whole = RowSource(txt, 8, tokenizer=tok, documents="file")           # asked for: the file stays whole
    assert _stream(whole)[:20] == tok.encode(CODE)[:20]
    prose = tmp_path / "prose.txt"
    prose.write_text("A line of prose.\nAnother one.\n" * 10)
    assert RowSource(prose, 8, tokenizer=tok).warnings == []


def test_a_folder_is_its_text_files_each_one_document(tmp_path, tok, tiny_checkpoint, capsys):
    d = tmp_path / "src"
    (d / "pkg").mkdir(parents=True)
    (d / "pkg" / "b.py").write_text("x = 2\n")
    (d / "a.md").write_text("# Title\n\nSome text.\n")
    (d / "image.png").write_bytes(b"\x89PNG\x00\x00")       # not a text suffix: left out
    src = RowSource(d, 4, tokenizer=tok, pack=False)
    assert [p.name for p in src.files] == ["a.md", "b.py"]
    rows = list(src.rows())
    assert [s for _, s, _ in rows] == [1, 2]
    assert rows[0][0][: rows[0][2]].tolist() == tok.encode("# Title\n\nSome text.\n")[:4]
    fp = src.fingerprint()
    (d / "pkg" / "b.py").write_text("x = 3\n")
    assert RowSource(d, 4, tokenizer=tok, pack=False).fingerprint()["sha256"] != fp["sha256"]
    code, stdout, err = cli(capsys, "cache", tiny_checkpoint, "-i", d, "-k", "hook_embed", "-o", tmp_path / "f.h5",
                            "--seq-len", 4, "--truncate")
    assert code == 0, err
    assert "2 rows x 4 tokens (2 files, each one document, truncated)" in stdout
    assert ActivationStore.open(tmp_path / "f.h5").meta("source").tolist() == [1, 2]
    with pytest.raises(InputError, match="each of its files is one document"):
        RowSource(d, 4, tokenizer=tok, documents="lines")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no text or code files"):
        RowSource(tmp_path / "empty", 4, tokenizer=tok)


def test_help_states_the_rule(capsys, monkeypatch):
    import re
    monkeypatch.setenv("COLUMNS", "200")
    code, stdout, _ = cli(capsys, "cache", "--help")
    text = re.sub(r"[│\s]+", " ", stdout)
    assert code == 0 and "A .txt file (one document per line), a code or prose file" in text
    assert "the whole file is one document, newlines kept" in text and "lines for .txt, file for code and prose" in text


def test_one_jsonl_reader_for_cache_inputs_and_training_corpora(tmp_path, capsys):
    from workbench.training.corpus import load_corpus
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "first doc"}\n\n{"text": "second"}\n{"body": "x"}\n')
    with pytest.raises(InputError, match=r"d.jsonl line 4 has no 'text' field \(it has \['body'\]\); pass"):
        list(jsonl_texts(jl, "text", "pass --text-field NAME"))
    with pytest.raises(InputError, match="d.jsonl line 4 has no 'text' field .*set data.jsonl_field"):
        load_corpus([str(jl)], 0.5)
    jl.write_text('{"text": "first doc"}\n\n{"text": "second"}\n{"text": "third"}\n')
    assert list(jsonl_texts(jl, "text", "")) == [(1, "first doc"), (3, "second"), (4, "third")]
    corpus = load_corpus([str(jl)], 0.0)
    assert sorted(t for _, t in corpus.train + corpus.val) == ["first doc", "second", "third"]
    jl.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(InputError, match="line 2 has no 'text' field .*it is a list"):
        load_corpus([str(jl)], 0.5)


def test_npy_ids_are_checked_in_their_own_dtype(tmp_path):
    np.save(tmp_path / "u.npy", np.array([[1, 2], [3, 2**63 + 5]], dtype=np.uint64))
    with pytest.raises(InputError, match=r"token id 9223372036854775813 at row 1 of .*u.npy is outside"):
        RowSource(tmp_path / "u.npy", None, d_vocab=512)
    np.save(tmp_path / "neg.npy", np.array([4, -3, 2], dtype=np.int16))
    with pytest.raises(InputError, match="token id -3 at position 1"):
        RowSource(tmp_path / "neg.npy", 2, d_vocab=512)
    np.save(tmp_path / "f.npy", np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(InputError, match="float32 values; a .npy input must hold integer token ids"):
        RowSource(tmp_path / "f.npy", None)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="is not a readable .npy array"):
        RowSource(tmp_path / "junk.npy", None)


def test_default_seq_len(tmp_path, tok):
    p = tmp_path / "t.txt"
    p.write_text("hello world\n" * 50)
    assert RowSource(p, None, tokenizer=tok).seq_len == 128
    assert RowSource(p, None, tokenizer=tok, n_ctx=64).seq_len == 64
    np.save(tmp_path / "ids.npy", np.zeros((3, 300), dtype=np.int64))
    assert RowSource(tmp_path / "ids.npy", None, n_ctx=64).seq_len == 300   # a 2-D .npy's width is asked for


def test_input_errors_from_the_cli(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "e.py").write_text("")
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", tmp_path / "e.py", "-k", "hook_embed",
                       "-o", tmp_path / "o.h5")
    assert_one_line_error(code, err, "e.py is empty")
    code, _, err = cli(capsys, "cache", tiny_checkpoint, "-i", tmp_path / "nothing", "-k", "hook_embed",
                       "-o", tmp_path / "o.h5")
    assert_one_line_error(code, err, "input not found")
