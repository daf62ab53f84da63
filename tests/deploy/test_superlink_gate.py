"""The SuperLink's pass-through layers gated: pinned to Flower 1.42's stack, same answers as Flower's own."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import importlib
import inspect
import ssl
from base64 import b64encode
from types import SimpleNamespace

import pytest

from fedcustomer.deploy import coordinator as co
from fedcustomer.deploy import superlink_gate as sg
from fedcustomer.deploy.pki import make_dev_certificates, make_node_keys
from fedcustomer.errors import ConfigError

# Flower's modules whose layers' dispatch conditions the gate copies (whole source, so a changed
# helper such as ``_is_control_path`` fails here too): re-read them and update GATED on an upgrade
PINNED_SOURCES = {
    "flwr.superlink.routers.control.middlewares": "ab2711d4806dccc29c81",
    "flwr.superlink.routers.fleet.node_auth": "8646e6bfd8e5b47d062a",
    "flwr.superlink.routers.fleet.middlewares": "7c8ac1dc22ae7a8586e8",
}
FLOWER_STACK = [  # flwr.superlink.main._get_middleware() in 1.42, outermost first
    "ControlSensitiveResponseMiddleware",
    "BaseHTTPMiddleware",
    "ControlAuthenticationMiddleware",
    "ControlLicenseMiddleware",
    "ProtobufTranslationMiddleware",
    "ControlEventLogMiddleware",
    "NodeAuthMiddleware",
    "FleetEventLogMiddleware",
]


def test_the_installed_flower_has_the_stack_and_layers_the_gate_was_written_for():
    """Fails when a Flower upgrade changes the SuperLink's layers: then GATED must be checked again."""
    import flwr

    assert sg.tested(flwr.__version__)
    main = importlib.import_module(sg.MAIN_MODULE)
    assert [m.cls.__name__ for m in main._get_middleware()] == FLOWER_STACK
    for module, digest in PINNED_SOURCES.items():
        source = inspect.getsource(importlib.import_module(module))
        assert hashlib.sha256(source.encode()).hexdigest()[:20] == digest, module
    assert {module for module, _ in sg.GATED} == set(PINNED_SOURCES)


def test_only_the_pass_through_layers_are_gated_and_the_order_is_flowers():
    main = importlib.import_module(sg.MAIN_MODULE)
    gated = sg.gate_middleware(list(main._get_middleware()))
    names = [m.kwargs["inner"].__name__ if m.cls is sg.PathGate else m.cls.__name__ for m in gated]
    assert names == FLOWER_STACK
    kept = [m.cls.__name__ for m in gated if m.cls is not sg.PathGate]
    assert kept == ["BaseHTTPMiddleware", "ProtobufTranslationMiddleware"]  # the error translator, protobuf


class _Recorder:
    """Stands in for a Flower layer and for the next layer, recording who saw each request."""

    def __init__(self, app=None, seen=None, name="next"):
        self.app, self.seen, self.name = app, seen if seen is not None else [], name

    async def __call__(self, scope, receive, send):
        self.seen.append(self.name)
        if self.app is not None:
            await self.app(scope, receive, send)


def _gate(applies):
    seen: list[str] = []
    nxt = _Recorder(seen=seen)

    class Layer(_Recorder):
        def __init__(self, app):
            super().__init__(app, seen, "layer")

    return sg.PathGate(nxt, inner=Layer, applies=applies), seen


def _call(gate, path, kind="http", app=None):
    scope = {"type": kind, "path": path, "root_path": "", "headers": [], "query_string": b"", "app": app}
    scope |= {"scheme": "https", "server": ("127.0.0.1", 1)} if kind == "http" else {}
    asyncio.run(gate(scope, None, None))


@pytest.mark.parametrize(
    ("applies", "path", "through_layer"),
    [
        (sg._control_only, "/v1/fleet/pull-messages", False),
        (sg._control_only, "/v1/runtime/acquire-task", False),
        (sg._control_only, "/v1/control/list-runs", True),
        (sg._fleet_only, "/v1/fleet/pull-messages", True),
        (sg._fleet_only, "/v1/runtime/acquire-task", False),
        (sg._fleet_only, "/v1/control/start-run", False),
    ],
)
def test_a_request_skips_a_layer_only_where_that_layer_passes_it_on(applies, path, through_layer):
    gate, seen = _gate(applies)
    _call(gate, path)
    assert seen == (["layer", "next"] if through_layer else ["next"])


def test_the_fleet_event_log_layer_runs_when_a_plugin_is_loaded_and_non_http_scopes_reach_flowers_layer():
    gate, seen = _gate(sg._fleet_with_event_log)
    _call(gate, "/v1/fleet/push-object", app=SimpleNamespace(state=SimpleNamespace()))
    assert seen == ["next"]
    seen.clear()
    with_plugin = SimpleNamespace(state=SimpleNamespace(fleet_event_log_plugin=object()))
    _call(gate, "/v1/fleet/push-object", app=with_plugin)
    assert seen == ["layer", "next"]
    seen.clear()
    _call(gate, "/v1/control/list-runs", app=with_plugin)
    assert seen == ["next"]
    seen.clear()
    _call(gate, "", kind="lifespan")
    assert seen == ["layer", "next"]  # Flower's BaseHTTPMiddleware passes non-HTTP scopes on itself


def test_an_untested_flower_runs_unchanged(monkeypatch):
    main = importlib.import_module(sg.MAIN_MODULE)
    before = (main._get_middleware, main.create_app)
    assert sg.install(version="1.43.0") is False
    assert (main._get_middleware, main.create_app) == before


def test_install_gates_flowers_app_and_freezes_what_was_imported(monkeypatch):
    main = importlib.import_module(sg.MAIN_MODULE)
    monkeypatch.setattr(main, "_get_middleware", main._get_middleware)
    monkeypatch.setattr(main, "create_app", lambda *a, **k: ("app", a, k))
    frozen: list[bool] = []
    monkeypatch.setattr(sg.gc, "freeze", lambda: frozen.append(True))
    assert sg.install() is True and sg.install() is True  # twice: gated once
    assert main.create_app(1, x=2) == ("app", (1,), {"x": 2}) and frozen == [True]
    stack = main._get_middleware()
    assert [m.cls for m in stack].count(sg.PathGate) == 6 and len(stack) == len(FLOWER_STACK)


def test_the_entry_point_needs_flowers_command_after_a_double_dash(capsys):
    assert sg.main([]) == 2 and sg.main(["--"]) == 2
    assert "usage" in capsys.readouterr().err


def test_the_coordinator_runs_the_gate_unless_told_to_run_flowers_superlink_as_shipped(tmp_path, monkeypatch):
    cdir = co.CoordinatorDir(tmp_path)
    monkeypatch.delenv(co.SUPERLINK_ENV, raising=False)
    cmd = co.superlink_command(cdir, host="127.0.0.1", port=1, certs=None, node_auth=False)
    assert cmd[1:4] == ["-m", "fedcustomer.deploy.superlink_gate", "--"]
    assert cmd[4].endswith("flower-superlink") and cmd[5] == "--host"
    monkeypatch.setenv(co.SUPERLINK_ENV, "flower")
    assert co.superlink_command(cdir, host="127.0.0.1", port=1, certs=None, node_auth=False)[0] == cmd[4]
    monkeypatch.setenv(co.SUPERLINK_ENV, "fast")
    with pytest.raises(ConfigError, match="FEDCUSTOMER_SUPERLINK must be gated or flower"):
        co.superlink_command(cdir, host="127.0.0.1", port=1, certs=None, node_auth=False)


def _fleet_headers(private_key, timestamp: str) -> dict[str, str]:
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message

    public = public_key_to_bytes(private_key.public_key())
    return {
        "flwr-public-key": b64encode(public).decode("ascii"),
        "flwr-timestamp": timestamp,
        "flwr-signature": b64encode(sign_message(private_key, timestamp.encode("ascii"))).decode("ascii"),
    }


@pytest.mark.parametrize("stack", ["gated", "flower"])
def test_a_real_superlink_refuses_unauthenticated_fleet_requests_and_marks_sensitive_control_answers(
    tmp_path, monkeypatch, stack
):
    """A real SuperLink over TLS with node authentication, gated and as Flower ships it: the same answers.

    A registered node's signed requests are answered, twice (the second from the kept key lookup
    when gated), and refused at once after the node is unregistered through the Control API.
    """
    import httpx
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.proto.control_pb2 import GetLoginDetailsRequest
    from flwr.proto.fleet_pb2 import PullMessagesRequest
    from flwr.proto.node_pb2 import Node

    from fedcustomer.deploy import flower as fl

    monkeypatch.setenv(co.SUPERLINK_ENV, stack)
    certs = make_dev_certificates(tmp_path / "c")
    cdir = co.CoordinatorDir(tmp_path / "coord")
    port = fl.free_port()
    co.write_runtime_secret(cdir)
    link = fl.start(
        co.superlink_command(cdir, host="127.0.0.1", port=port, certs=certs, serverapp="warm"),
        cdir.log_path,
        fl.flower_env(cdir.flwr_home),
        cwd=cdir.root,
    )
    tls = ssl.create_default_context(cafile=str(certs.ca_cert))
    base = f"https://127.0.0.1:{port}"
    pull = PullMessagesRequest(node=Node(node_id=12345)).SerializeToString()
    proto = {"content-type": "application/protobuf"}
    stranger = ec.generate_private_key(ec.SECP384R1())
    fresh = datetime.datetime.now(datetime.UTC)
    keys = make_node_keys(tmp_path / "bank-keys")
    bank = serialization.load_ssh_private_key(keys.private_key.read_bytes(), password=None)
    co.write_flwr_config(cdir, f"127.0.0.1:{port}", certs.ca_cert)

    def bank_pull(http: httpx.Client, node_id: int) -> int:
        signed = _fleet_headers(bank, datetime.datetime.now(datetime.UTC).isoformat())
        body = PullMessagesRequest(node=Node(node_id=node_id)).SerializeToString()
        return http.post(f"{base}/v1/fleet/pull-messages", content=body, headers=proto | signed).status_code

    try:
        co.wait_until_up(cdir, link, timeout=600)
        node_id = co.register_node(cdir, keys.public_key, name="bank")
        with httpx.Client(verify=tls, timeout=60) as http:
            assert bank_pull(http, node_id) == bank_pull(http, node_id) == 200
            assert bank_pull(http, node_id + 1) == 401  # its key, another node's id
            fl.flwr_cli(["supernode", "unregister", str(node_id), fl.CONNECTION], cdir.flwr_home)
            assert bank_pull(http, node_id) == 401
            unsigned = http.post(f"{base}/v1/fleet/pull-messages", content=pull, headers=proto)
            unknown = http.post(
                f"{base}/v1/fleet/pull-messages",
                content=pull,
                headers=proto | _fleet_headers(stranger, fresh.isoformat()),
            )
            stale = http.post(
                f"{base}/v1/fleet/pull-messages",
                content=pull,
                headers=proto | _fleet_headers(stranger, (fresh - datetime.timedelta(hours=1)).isoformat()),
            )
            login = http.post(
                f"{base}/v1/control/get-login-details",
                content=GetLoginDetailsRequest().SerializeToString(),
                headers=proto,
            )
        assert unsigned.status_code == unknown.status_code == stale.status_code == 401
        assert login.headers.get("cache-control") == "no-store"  # a Control-only layer still ran
        log = cdir.log_path.read_text(errors="replace")
        assert "are not gated" not in log
    finally:
        fl.stop(link)
