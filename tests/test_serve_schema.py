"""Property-based API tests: schemathesis generates requests (valid and invalid) from the live
server's OpenAPI spec; no request may get a 5xx, and answers must match the spec."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pomlia_hpc.errors import ConfigError
from pomlia_hpc.serve.decode import RequestError
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.security import BearerGuard, load_token

TOKEN = "schema-token-0123456789abcdef"
EXAMPLES = 25  # per operation and mode: about 600 requests in all
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    bundle = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    with LocalServer(
        bundle,
        tmp_path_factory.mktemp("logs"),
        env={"POMLIA_SERVE_TOKEN": TOKEN},
        args=["--max-upload-mb", "1"],
    ) as srv:
        yield srv


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("auth", [False, True], ids=["anonymous", "token"])
def test_generated_requests_never_get_a_server_error(
    server: LocalServer, mode: GenerationMode, auth: bool
) -> None:
    # Driven by hand rather than schemathesis' pytest plugin, whose lazy fixture loader does not
    # run under pytest 9. With the token, bodies reach the feedback validation, not the guard.
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/feedback", "/v1/model"}
    for op in operations:
        if mode == GenerationMode.NEGATIVE and op.method.upper() != "POST":
            continue  # a GET without parameters has nothing to make invalid

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        check()


def test_guarded_routes_are_forbidden_without_a_configured_token() -> None:
    with pytest.raises(RequestError) as info:
        BearerGuard(load_token(None, env={})).check(f"Bearer {TOKEN}")
    assert info.value.status == 403 and "without a token" in info.value.message
    with pytest.raises(ConfigError, match="at least 16"):
        load_token(None, env={"POMLIA_SERVE_TOKEN": "short"})
