"""The router alone (templates, parameters, prefixes, specificity, methods),
then through the App: 404, 405, HEAD, OPTIONS and paths as clients spell them."""

from __future__ import annotations

import json

import pytest

from pycompat.api.access import ALLOWED_METHODS, AccessPolicy
from pycompat.api.app import App
from pycompat.api.registry import Registry, ServedModel
from pycompat.api.router import Route, Router
from pycompat.http.messages import Request, Response


def named(name: str):
    """A handler that says which route it is and what it was given."""
    async def handler(request: Request, **params: str) -> Response:
        return Response(200, json.dumps({"route": name, **params}).encode())

    handler.route = name
    return handler


DIALECT = [
    Route("GET", "/models", named("list")),
    Route("GET", "/models/{model...}", named("model")),
    Route("POST", "/chat/completions", named("chat")),
    Route("GET", "/chat/completions/{completion_id}", named("stored")),
    Route("POST", "/chat/completions/{completion_id}", named("update")),
    Route("GET", "/chat/completions/{completion_id}/messages", named("messages")),
    Route("GET", "/a/b", named("a/b")),
    Route("GET", "/a/{x}", named("a/{x}")),
    Route("GET", "/a/{x...}", named("a/{x...}")),
    Route("GET", "/a/{x}/c", named("a/{x}/c")),
]
OWNER = object()


@pytest.fixture(scope="module")
def router() -> Router:
    r = Router()
    r.add([Route("GET", "/", named("root")), Route("GET", "/health", named("health"))])
    r.add(DIALECT, ("/v1", "/openai/v1"), owner=OWNER)
    return r


@pytest.mark.parametrize("path, route, params", [
    ("/", "root", {}),
    ("//", "root", {}),
    ("/health", "health", {}),
    ("/health/", "health", {}),
    ("/v1/models", "list", {}),
    ("/v1/models/", "list", {}),
    ("/openai/v1/models", "list", {}),
    ("/v1/models/smol", "model", {"model": "smol"}),
    ("/v1/models/smol/", "model", {"model": "smol"}),
    ("/openai/v1/models/smol", "model", {"model": "smol"}),
    ("/v1/models/org/model", "model", {"model": "org/model"}),  # %2F is decoded before routing: the same path
    ("/v1/models//x", "model", {"model": "/x"}),
    ("/v1/models/a b?é", "model", {"model": "a b?é"}),
    ("/v1/chat/completions", "chat", {}),
    ("/v1/chat/completions/cmpl-1", "stored", {"completion_id": "cmpl-1"}),
    ("/v1/chat/completions/cmpl-1/messages", "messages", {"completion_id": "cmpl-1"}),
    ("/v1/chat/completions/cmpl-1/messages/", "messages", {"completion_id": "cmpl-1"}),
    # The most specific template wins: literal, then {x}, then {x...}.
    ("/v1/a/b", "a/b", {}),
    ("/v1/a/z", "a/{x}", {"x": "z"}),
    ("/v1/a/z/c", "a/{x}/c", {"x": "z"}),
    ("/v1/a/b/c", "a/{x}/c", {"x": "b"}),
    ("/v1/a/z/d", "a/{x...}", {"x": "z/d"}),
    ("/v1/a/b/c/d", "a/{x...}", {"x": "b/c/d"}),
    ("/v1/models/../x/..", "model", {"model": "../x/.."}),  # no dot-segment removal: ".." is part of an id
])
def test_paths_resolve_to_their_route_and_parameters(router, path, route, params):
    match = router.resolve(path)
    assert match is not None, path
    assert next(iter(match.methods.values())).route == route
    assert match.params == params
    assert match.owner is (None if route in ("root", "health") else OWNER)


@pytest.mark.parametrize("path", [
    "/v2/models", "/V1/models", "/v1//models", "/v1", "/openai", "/openai/v2/models", "models", "v1/models", "*", "",
    "/v1/chat/completions//messages", "/v1/chat/completions/x/other", "/v1/chat", "/v1/a",
    "/health/x", "/v1/modelsx",
])
def test_other_paths_are_not_found(router, path):
    assert router.resolve(path) is None


@pytest.mark.parametrize("path, method, route, allow", [
    ("/v1/models", "GET", "list", "GET, HEAD, OPTIONS"),
    ("/v1/models", "HEAD", "list", "GET, HEAD, OPTIONS"),
    ("/v1/models", "POST", None, "GET, HEAD, OPTIONS"),
    ("/v1/models", "OPTIONS", None, "GET, HEAD, OPTIONS"),
    ("/v1/models/x", "HEAD", "model", "GET, HEAD, OPTIONS"),
    ("/v1/models/x", "DELETE", None, "GET, HEAD, OPTIONS"),
    ("/v1/chat/completions", "POST", "chat", "POST, OPTIONS"),
    ("/v1/chat/completions", "GET", None, "POST, OPTIONS"),
    ("/v1/chat/completions", "HEAD", None, "POST, OPTIONS"),
    ("/v1/chat/completions/x", "GET", "stored", "GET, POST, HEAD, OPTIONS"),
    ("/v1/chat/completions/x", "POST", "update", "GET, POST, HEAD, OPTIONS"),
    ("/v1/chat/completions/x", "head", None, "GET, POST, HEAD, OPTIONS"),  # methods are case-sensitive
])
def test_methods_head_and_allow(router, path, method, route, allow):
    match = router.resolve(path)
    handler = match.handler(method)
    assert (handler and handler.route) == route
    assert match.allow == allow


@pytest.mark.parametrize("routes, error", [
    ([Route("GET", "models", named("x"))], "starts with '/'"),
    ([Route("GET", "/a/{x...}/b", named("x"))], "comes last"),
    ([Route("GET", "/a/x{y}", named("x"))], "whole segment"),
    ([Route("GET", "/a/{1x}", named("x"))], "whole segment"),
    ([Route("GET", "/a/{x}/{x}", named("x"))], "twice"),
    ([Route("GET", "/a/{x}", named("x")), Route("GET", "/a/{x}", named("y"))], "routed twice"),
    ([Route("GET", "/a", named("x")), Route("GET", "/a/", named("y"))], "routed twice"),
    ([Route("GET", "/a/{x}", named("x")), Route("POST", "/a/{y}", named("y"))], "matches the same paths"),
])
def test_malformed_or_clashing_templates_are_refused(routes, error):
    with pytest.raises(ValueError, match=error):
        Router().add(routes)


def test_two_owners_cannot_share_a_path():
    r = Router()
    r.add([Route("GET", "/x/{y}", named("x"))], owner="one")
    with pytest.raises(ValueError, match="same paths"):
        r.add([Route("POST", "/x/{y}", named("x"))], owner="two")


# --- through the App --------------------------------------------------------------------

MODELS = ["smol", "org/model", "a b?é"]


class StubRegistry(Registry):
    def __init__(self):
        super().__init__([ServedModel(MODELS, engine=None, created=7)])


def request(method: str, target: str, **headers: str) -> Request:
    return Request(method, target, [(k.replace("_", "-"), v) for k, v in headers.items()])


def error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 7, "owned_by": "pycompat"}


NOT_ALLOWED = "Method {} is not allowed for {}; use {}."


@pytest.mark.parametrize("method, target, status, allow, body", [
    ("GET", "/v1/nothing-here", 404, None, error("Invalid URL (GET /v1/nothing-here)", "unknown_url")),
    ("POST", "/v1/models/", 405, "GET, HEAD, OPTIONS", error(NOT_ALLOWED.format("POST", "/v1/models/", "GET, HEAD, OPTIONS"), "method_not_allowed")),
    ("GET", "/v1/embeddings", 405, "POST, OPTIONS", error(NOT_ALLOWED.format("GET", "/v1/embeddings", "POST, OPTIONS"), "method_not_allowed")),
    ("DELETE", "/v1/chat/completions", 405, "POST, GET, HEAD, OPTIONS",
     error(NOT_ALLOWED.format("DELETE", "/v1/chat/completions", "POST, GET, HEAD, OPTIONS"), "method_not_allowed")),
    ("HEAD", "/v1/completions", 405, "POST, OPTIONS", error(NOT_ALLOWED.format("HEAD", "/v1/completions", "POST, OPTIONS"), "method_not_allowed")),
    ("GET", "/v1/models", 200, None, {"object": "list", "data": [model(m) for m in MODELS]}),
    ("HEAD", "/v1/models/", 200, None, {"object": "list", "data": [model(m) for m in MODELS]}),  # the HTTP layer drops the body
    ("GET", "/v1/models/smol", 200, None, model("smol")),
    ("GET", "/v1/models/org%2Fmodel", 200, None, model("org/model")),
    ("GET", "/v1/models/org/model/", 200, None, model("org/model")),
    ("GET", "/v1/models/a%20b%3F%C3%A9", 200, None, model("a b?é")),
    ("GET", "http://localhost:8000/v1/models/smol?x=1", 200, None, model("smol")),
    ("GET", "/v1/models/nope", 404, None,
     error("The model `nope` does not exist or you do not have access to it.", "model_not_found")),
    ("GET", "/v1%2Fmodels", 200, None, {"object": "list", "data": [model(m) for m in MODELS]}),
    ("OPTIONS", "/v1/chat/completions/", 204, "POST, GET, HEAD, OPTIONS", None),
    ("OPTIONS", "/v1/chat/completions/chatcmpl-x", 204, "GET, POST, DELETE, HEAD, OPTIONS", None),
    ("OPTIONS", "/v1/models/smol", 204, "GET, HEAD, OPTIONS", None),
    ("OPTIONS", "*", 204, ALLOWED_METHODS, None),
    ("OPTIONS", "/nope", 404, None, error("Invalid URL (OPTIONS /nope)", "unknown_url")),
    ("GET", "*", 404, None, error("Invalid URL (GET *)", "unknown_url")),
])
async def test_the_app_answers_routing_as_before(method, target, status, allow, body):
    response = await App(StubRegistry())(request(method, target))
    assert response.status == status
    assert dict(response.headers).get("allow") == allow
    if body is None:
        assert response.body == b""
    else:
        assert json.loads(response.body) == body


@pytest.mark.parametrize("target, headers, status", [
    ("/v1/nothing-here", {}, 404),  # an unknown path needs no key: the answer says nothing
    ("/v1/nothing-here", {"host": "evil.example"}, 403),  # access is checked before the 404
    ("/v1/models", {}, 401),
    ("/v1/models/smol", {"authorization": "Bearer sk-k"}, 200),
    ("/", {}, 200),
])
async def test_access_is_checked_before_routing_answers(target, headers, status):
    app = App(StubRegistry(), AccessPolicy(api_keys=["sk-k"]) if "host" not in headers else AccessPolicy())
    assert (await app(request("GET", target, **headers))).status == status
