"""`make flwr-local`: Flower's local simulation in this environment, with no SuperLink left behind."""

from __future__ import annotations

import socket
import subprocess

from fedcustomer.deploy import flwr_local


def test_local_superlink_installs_no_dependencies(tmp_path):
    cmd = flwr_local.superlink_command(tmp_path / "log", tmp_path / "db")
    assert "--disable-runtime-dependency-installation" in cmd and "--simulation" in cmd


def test_the_superlink_is_stopped_when_the_run_fails(monkeypatch, tmp_path):
    monkeypatch.setattr(flwr_local, "port_in_use", lambda port, host="127.0.0.1": False)
    monkeypatch.setattr(flwr_local, "healthy", lambda: True)
    started, stopped, ran = [], [], []

    class Proc:
        def poll(self):
            return None

    def fake_start(cmd, log, env, cwd=None):
        started.append(env.get("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"))
        return Proc()

    def fake_run(cmd, env, check):
        ran.append(cmd[1:4])
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(flwr_local, "start", fake_start)
    monkeypatch.setattr(flwr_local, "stop", lambda proc: stopped.append(proc))
    monkeypatch.setattr(flwr_local.subprocess, "run", fake_run)
    assert flwr_local.main(["--stream"], app_dir=tmp_path) == 3
    assert started == ["1"] and len(stopped) == 1
    assert ran == [["run", str(tmp_path), "local"]]


def test_an_already_running_superlink_is_reported_not_reused(monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        monkeypatch.setattr(flwr_local, "HTTP_PORT", s.getsockname()[1])
        assert flwr_local.main([]) == 2
    assert "already listening" in capsys.readouterr().err
