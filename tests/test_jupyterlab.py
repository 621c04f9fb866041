"""JupyterLab serves the notebooks and runs one through its own kernel, as a user opening them would.

Starts ``jupyter lab`` on 127.0.0.1 (a free port, a token, no browser, ``--allow-root`` when run as
root, config and runtime folders of its own), checks it serves JupyterLab and lists every notebook,
then opens a session on notebook 01 and executes each of its cells through the server's kernel
(REST for the session, the kernel's websocket channel for the cells), and shuts the server down.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest
from tornado.ioloop import IOLoop
from tornado.websocket import websocket_connect

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
EXECUTED = "01_model_and_hooks.ipynb"
START_TIMEOUT_S = 180   # a busy 2-core machine can take a minute to import JupyterLab
CELL_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A ``jupyter lab`` process and the REST calls the test makes to it."""

    def __init__(self, tmp_path: Path) -> None:
        self.token = uuid.uuid4().hex
        self.runtime = tmp_path / "runtime"
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(self.runtime), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
               "JUPYTER_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={_free_port()}",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={NOTEBOOK_DIR}",
               f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
               f"--LabApp.user_settings_dir={tmp_path / 'settings'}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")      # JupyterLab refuses to start as root without it
        self.log = (tmp_path / "lab.log").open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.port = self._wait_until_serving()

    def _wait_until_serving(self) -> int:
        """The port from the server's own runtime file (it may have moved off a taken one), once it answers."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {self.proc.returncode}: {self.log_text()[-3000:]}")
            for info in self.runtime.glob("jpserver-*.json"):
                port = json.loads(info.read_text())["port"]
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={self.token}", timeout=5)
                    return port
                except OSError:
                    pass
            time.sleep(0.2)
        pytest.fail(f"jupyter lab did not answer within {START_TIMEOUT_S} s: {self.log_text()[-3000:]}")

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("POST", "/api/shutdown")
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=60)
        self.log.close()


def _execute_request(code: str, session: str) -> dict:
    return {"header": {"msg_id": uuid.uuid4().hex, "username": "test", "session": session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}


async def _run_cells(url: str, token: str, cells: list[str]) -> list[list[dict]]:
    """Each cell's iopub outputs, executed in order on the kernel behind ``url`` (its channels websocket)."""
    session = uuid.uuid4().hex
    ws = await websocket_connect(f"{url}?session_id={session}&token={token}")
    outputs = []
    try:
        for code in cells:
            request = _execute_request(code, session)
            msg_id, got, replied, idle = request["header"]["msg_id"], [], False, False
            await ws.write_message(json.dumps(request))
            while not (replied and idle):
                raw = await ws.read_message()
                assert raw is not None, "the kernel's websocket closed mid-cell"
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["header"]["msg_type"]
                if kind == "error":
                    pytest.fail(f"cell failed in the server's kernel:\n{code}\n" + "\n".join(msg["content"]["traceback"]))
                if kind == "execute_reply":
                    replied = True
                    assert msg["content"]["status"] == "ok", msg["content"]
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
                elif kind in ("execute_result", "display_data", "stream"):
                    got.append(msg)
            outputs.append(got)
    finally:
        ws.close()
    return outputs


@pytest.fixture()
def lab(tmp_path):
    server = LabServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_jupyter_lab_serves_the_notebooks_and_runs_one_in_its_kernel(lab):
    status, page = lab.call("GET", "/lab")
    assert status == 200 and b"JupyterLab" in page
    listing = json.loads(lab.call("GET", "/api/contents")[1])
    served = sorted(item["name"] for item in listing["content"] if item["type"] == "notebook")
    assert served == sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) and EXECUTED in served
    nb = json.loads(lab.call("GET", f"/api/contents/{EXECUTED}")[1])["content"]   # the server reads it back
    cells = [c["source"] for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells == [c.source for c in nbformat.read(NOTEBOOK_DIR / EXECUTED, as_version=4).cells
                     if c.cell_type == "code"]

    session = json.loads(lab.call("POST", "/api/sessions", {"path": EXECUTED, "type": "notebook", "name": EXECUTED,
                                                             "kernel": {"name": "python3"}})[1])
    kernel = session["kernel"]["id"]
    url = f"ws://127.0.0.1:{lab.port}/api/kernels/{kernel}/channels"
    outputs = IOLoop.current().run_sync(lambda: _run_cells(url, lab.token, cells), timeout=CELL_TIMEOUT_S * len(cells))
    assert len(outputs) == len(cells)
    html = [m["content"]["data"]["text/html"] for out in outputs for m in out
            if m["header"]["msg_type"] in ("execute_result", "display_data") and "text/html" in m["content"]["data"]]
    assert any("window.CircuitsVis.render(" in h for h in html), "the notebook showed no circuitsvis figure"
    text = "".join(m["content"].get("text", "") for out in outputs for m in out if m["header"]["msg_type"] == "stream")
    assert "max |ours - transformers| =" in text                      # the parity cell printed its check
    assert lab.call("DELETE", f"/api/sessions/{session['id']}")[0] == 204
