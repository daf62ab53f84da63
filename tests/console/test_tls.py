"""`fedcustomer console --cert --key` serves HTTPS (certificates from `fedcustomer certs`) with Secure cookies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx

from fedcustomer.deploy.pki import make_dev_certificates
from tests.people import people_home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_console_serves_tls_on_localhost_with_secure_cookies(tmp_path) -> None:
    store, _ = people_home(tmp_path, "bank_t", {"alice": "partner_admin"})
    store.close()
    certs = make_dev_certificates(tmp_path / "certs", ["127.0.0.1", "localhost"], days=1)
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "fedcustomer",
        "console",
        "--home",
        str(tmp_path / "bank_t"),
        "--port",
        str(port),
        "--cert",
        str(certs.server_cert),
        "--key",
        str(certs.server_key),
    ]
    proc = subprocess.Popen(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        response = None
        with httpx.Client(verify=str(certs.ca_cert)) as client:
            while response is None:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "the console did not start"
                try:
                    response = client.get(f"https://127.0.0.1:{port}/login")
                except httpx.ConnectError:
                    time.sleep(0.1)  # the server is still starting: poll again
        assert response.status_code == 200
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("__Host-fc_session=") and "Secure" in cookie and "HttpOnly" in cookie
    finally:
        proc.terminate()
        proc.wait(timeout=30)
