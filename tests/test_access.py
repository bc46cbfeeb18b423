"""API keys, CORS and the Host check: the policy on its own (table-driven),
through the router, and end to end with the official SDK."""

from __future__ import annotations

import os

import httpx
import openai
import pytest

import openapi
from conftest import running_server
from pycompat.api.access import AccessPolicy, may_name_this_server
from pycompat.api.app import App
from pycompat.api.errors import APIError
from pycompat.api.registry import Registry, ServedModel
from pycompat.http.messages import Request

MODEL = "smollm2-135m-instruct"


def request(method: str = "GET", path: str = "/v1/models", **headers: str) -> Request:
    return Request(method, path, [(k.replace("_", "-").lower(), v) for k, v in headers.items()])


@pytest.mark.parametrize("origin, allowed", [
    ("http://localhost:3000", True),
    ("https://127.0.0.1", True),
    ("http://[::1]:8080", True),
    ("http://app.localhost:5173", True),
    ("vscode-webview://abc123", True),
    ("chrome-extension://abcdefghijklmnop", True),
    ("https://evil.example", False),
    ("http://localhost.evil.example", False),
    ("http://192.168.1.5:3000", False),
    ("null", False),  # sandboxed frames and file pages
    ("", False),
])
def test_default_origins(origin, allowed):
    assert AccessPolicy().origin_allowed(origin) is allowed


def test_named_origins_and_keys_widen_the_default():
    assert AccessPolicy(cors_origins=["http://192.168.1.5:3000/"]).origin_allowed("http://192.168.1.5:3000")
    assert AccessPolicy(cors_origins=["*"]).origin_allowed("https://evil.example")
    assert AccessPolicy(api_keys=["k"]).origin_allowed("https://evil.example")


@pytest.mark.parametrize("host, ok", [
    ("localhost", True), ("127.0.0.1", True), ("[::1]", True), ("192.168.1.5", True), ("myserver", True),
    ("box.local", True), ("host.docker.internal", True), ("evil.example", False), ("127.0.0.1.nip.io", False),
])
def test_hosts_a_loopback_server_answers(host, ok):
    assert may_name_this_server(host) is ok


def check(policy: AccessPolicy, req: Request) -> APIError | None:
    try:
        policy.check(req, route_known=True)
    except APIError as e:
        return e
    return None


def test_keys_are_required_except_on_liveness_routes_and_preflights():
    policy = AccessPolicy(api_keys=["sk-one", "sk-two"])
    assert check(policy, request(authorization="Bearer sk-one")) is None
    assert check(policy, request(authorization="bearer   sk-two ")) is None
    missing = check(policy, request())
    assert missing.status == 401 and missing.code is None and missing.type == "invalid_request_error"
    wrong = check(policy, request(authorization="Bearer sk-wrong-key-1234"))
    assert wrong.status == 401 and wrong.code == "invalid_api_key" and "sk-wrong-key-1234" not in wrong.message
    assert check(policy, request(authorization="Basic c2s6b25l")).status == 401
    # A non-ASCII key arrives as UTF-8 bytes, which the HTTP layer decodes as latin-1.
    accented = AccessPolicy(api_keys=["clé-secrète"])
    assert check(accented, request(authorization="Bearer " + "clé-secrète".encode().decode("latin-1"))) is None
    for method, path in [("GET", "/health"), ("HEAD", "/health"), ("GET", "/"), ("HEAD", "/"), ("OPTIONS", "/v1/models")]:
        assert check(policy, request(method, path)) is None


def test_without_keys_a_public_host_or_a_foreign_origin_is_refused():
    policy = AccessPolicy(listen_host="127.0.0.1")
    assert check(policy, request(host="localhost:8000", origin="http://localhost:3000")) is None
    assert check(policy, request(host="evil.example:8000")).code == "host_not_allowed"
    assert check(policy, request(host="localhost", origin="https://evil.example")).code == "origin_not_allowed"
    # On a public address the Host cannot be checked (any name may point at it).
    assert check(AccessPolicy(listen_host="0.0.0.0"), request(host="pycompat.example.com")) is None


class StubRegistry(Registry):
    def __init__(self):
        super().__init__([ServedModel([MODEL], engine=None, created=0)])


async def test_router_answers_preflights_and_adds_cors_headers_only_for_allowed_origins():
    app = App(StubRegistry(), AccessPolicy(api_keys=["sk-k"]))
    pre = await app(request("OPTIONS", "/v1/chat/completions", origin="https://ui.example",
                            access_control_request_method="POST", access_control_request_headers="authorization, content-type"))
    headers = dict(pre.headers)
    assert pre.status == 204 and headers["access-control-allow-origin"] == "https://ui.example"
    assert "authorization" in headers["access-control-allow-headers"] and "POST" in headers["access-control-allow-methods"]
    denied = await app(request("GET", "/v1/models", origin="https://ui.example"))
    assert denied.status == 401 and dict(denied.headers)["access-control-allow-origin"] == "https://ui.example"

    local_only = App(StubRegistry(), AccessPolicy())
    foreign = await local_only(request("GET", "/v1/models", origin="https://evil.example"))
    assert foreign.status == 403 and not any(k.startswith("access-control") for k, _ in foreign.headers)
    local = await local_only(request("GET", "/v1/models", origin="http://localhost:3000"))
    assert local.status == 200 and dict(local.headers)["access-control-allow-origin"] == "http://localhost:3000"
    assert dict(local.headers)["vary"] == "Origin"


def test_keys_end_to_end_with_the_sdk(tmp_path, monkeypatch):
    monkeypatch.setenv("PYCOMPAT_API_KEY", "sk-from-env")
    with running_server(tmp_path / "serve.log", "--api-key", "sk-first", "--api-key", "sk-second",
                        "--context-length", "256") as (_, url):
        for key in ("sk-first", "sk-second", "sk-from-env"):
            client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
            assert client.chat.completions.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}]).choices
        with pytest.raises(openai.AuthenticationError) as refused:
            openai.OpenAI(base_url=url, api_key="sk-nope", max_retries=0).models.list()
        openapi.validate("ErrorResponse", refused.value.response.json())
        assert refused.value.response.json()["error"]["code"] == "invalid_api_key"
        base = url.removesuffix("/v1")
        assert httpx.get(base + "/v1/models").status_code == 401
        assert httpx.get(base + "/health").status_code == 200 and httpx.head(base + "/").status_code == 200
        # With a key, any origin may call from a browser (the page still needs the key).
        r = httpx.get(base + "/v1/models", headers={"Origin": "https://ui.example", "Authorization": "Bearer sk-first"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ui.example"
    assert os.environ["PYCOMPAT_API_KEY"] == "sk-from-env"


def test_without_keys_browsers_from_elsewhere_are_refused(server_url):
    base = server_url.removesuffix("/v1")
    evil = httpx.post(base + "/v1/chat/completions", headers={"Origin": "https://evil.example"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers
    openapi.validate("ErrorResponse", evil.json())
    rebound = httpx.get(base + "/v1/models", headers={"Host": "evil.example"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"
    local = httpx.get(base + "/v1/models", headers={"Origin": "http://localhost:8080"})
    assert local.status_code == 200 and local.headers["access-control-allow-origin"] == "http://localhost:8080"
