"""mnist-serve's options: where it may listen, the port and body limits, and models it cannot serve.

Nothing here serves for real: ``serve_forever`` is replaced so that a server that should have been refused fails
the test instead of running; nothing listens beyond 127.0.0.0/8.
"""

from __future__ import annotations

import socket
import socketserver
from pathlib import Path
from typing import Any

import pytest

import ggml_mnist as gm
from ggml_mnist import serve
from ggml_mnist.cli.serve import serve_main


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "fc.gguf"
    gm.Model.create("fc", seed=1).save(path)
    return path


@pytest.fixture(autouse=True)
def never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"mnist-serve started serving on {self.server_address}")

    monkeypatch.setattr(socketserver.BaseServer, "serve_forever", refuse)


@pytest.mark.parametrize(
    "host, said",
    [
        ("", "listens on every network interface"),
        ("0", "listens on every network interface"),
        ("0.0.0.0", "listens on every network interface"),
        ("::", "listens on every network interface"),
        ("192.0.2.1", "is not a loopback address"),
        ("example.com", "is not a loopback address"),
    ],
)
def test_a_host_other_machines_reach_needs_public(
    model_file: Path, host: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve_main([str(model_file), "--host", host, "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert f"mnist-serve: error: --host {host!r} {said}" in err and "no authentication" in err and "--public" in err
    with pytest.raises(gm.ConfigError, match="--public"):
        serve.make_server(gm.Model.create("fc"), host, 0)


def test_public_prints_a_warning(
    model_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    made: dict[str, Any] = {}

    class Fake:
        server_address = ("0.0.0.0", 8123)

        def serve_forever(self) -> None:
            pass

        def server_close(self) -> None:
            pass

    def fake_make_server(model: gm.Model, host: str, port: int, **kwargs: Any) -> Fake:
        made.update(host=host, port=port, **kwargs)
        return Fake()

    monkeypatch.setattr(serve, "make_server", fake_make_server)
    assert serve_main([str(model_file), "--host", "0.0.0.0", "--public", "--port", "8123", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert made["public"] is True and made["host"] == "0.0.0.0"
    assert "mnist-serve: warning: --host '0.0.0.0' listens on every network interface" in err
    assert "no authentication" in err and "http://0.0.0.0:8123/" in out
    assert serve.check_host("127.0.0.1", public=True) is None  # loopback: no warning, even with --public


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.0.2", "::1"])
def test_loopback_hosts_need_no_flag(host: str) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        srv = serve.make_server(gm.Model.create("fc"), host, 0)
    except OSError as exc:
        pytest.skip(f"cannot bind {host} here: {exc}")
    try:
        assert serve.is_loopback(str(srv.server_address[0]))
    finally:
        srv.server_close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "70000 is not a port; give 1-65535, or 0 for any free port"),
        (["--port", "-1"], "-1 is not a port"),
        (["--port", "http"], "'http' is not a port number"),
        (["--max-body", "-1"], "-1 bytes would refuse every picture; give at least 1"),
        (["--max-body", "0"], "0 bytes would refuse every picture"),
        (["--max-body", "4M"], "'4M' is not a whole number"),
    ],
)
def test_bad_port_and_body_limit_are_refused_by_the_parser(
    model_file: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        serve_main([str(model_file), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_model_that_cannot_read_pictures_is_refused_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = gm.Model.create("fc", image_size=(20, 20))
    model.save(tmp_path / "small.gguf")
    assert serve_main([str(tmp_path / "small.gguf"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "takes 20x20 inputs" in err and "trained on 28x28 images" in err
    with pytest.raises(gm.ConfigError, match="20x20"):
        serve.make_server(model, port=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_body": 0}, "max_body must be at least 1"),
        ({"read_timeout": 0}, "read_timeout must be more than 0"),
        ({"port": 70000}, "port must be 1-65535"),
        ({"max_connections": 0}, "max_connections must be at least 1"),
        ({"max_pixels": 0}, "max_pixels must be at least 1"),
    ],
)
def test_make_server_refuses_bad_limits(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(gm.ConfigError, match=message):
        serve.make_server(gm.Model.create("fc"), **{"port": 0, **kwargs})
