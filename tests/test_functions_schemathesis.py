"""schemathesis against the OpenAPI document the functions serve, with a real database and the
fake provider behind them: no 5xx, no response that violates the document, auth enforced,
405 with Allow for undeclared methods. Bounded: a few dozen examples per operation.

Generated organization ids are pointed at a real organization (positive cases only) and
generated model names at a priced model of the generated provider, so the fuzzing reaches
reservations, the provider call, settling and the reports instead of stopping at 404/422.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import schemathesis
from quotaflow.server import LocalServer
from quotaflow.testing import FakeProviderServer
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema
from schemathesis.generation.modes import GenerationMode

from tests.functions_support import (
    SERVICE_ROLE_KEY,
    JwksServer,
    World,
    fake,
    function_config,
    jwks,
    world,
)

__all__ = ["fake", "jwks", "world"]  # fixtures

MAX_EXAMPLES = 25

PRICED_MODEL = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-5",
    "google": "gemini-2.5-flash",
    "xai": "grok-4",
}

CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {"max-examples": MAX_EXAMPLES},
        "auth": {"openapi": {"bearer": {"bearer": SERVICE_ROLE_KEY}}},
        "checks": {
            # A body can match the schema and still be refused for reasons no JSON schema
            # states: an unpriced model (422), cross-field rules such as cached + cache-write
            # tokens <= input tokens, or an empty period (400). Everything else must be 2xx.
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "422", "429"]
            },
            # schemathesis's own list, plus 413: a batch of more events than the schema allows
            # can also be larger than the request-size limit, refused before it is parsed.
            "negative_data_rejection": {
                "expected-statuses": [
                    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                    "428", "429", "5xx",
                ]
            },
        },
        "phases": {"stateful": {"enabled": False}},
    }
)


def aim_at_real_data(case: Any, org: str) -> None:
    """Point a schema-valid case at the world's organization and priced models."""
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return
    if isinstance(case.query, dict) and "organization_id" in case.query:
        case.query["organization_id"] = org
    body = case.body
    if not isinstance(body, dict):
        return
    if "organization_id" in body:
        body["organization_id"] = org
    events = body.get("events")
    for event in events if isinstance(events, list) else []:
        if isinstance(event, dict) and "organization_id" in event:
            event["organization_id"] = org
    context, request = body.get("context"), body.get("request")
    if isinstance(context, dict) and "organization_id" in context:
        context["organization_id"] = org
    if isinstance(request, dict) and request.get("provider") in PRICED_MODEL:
        request["model"] = PRICED_MODEL[request["provider"]]


def describe(failure: Any) -> str:
    return f"{failure.title}: {failure.message}"[:2000]


def test_functions_conform_to_their_openapi_document(
    world: World, fake: FakeProviderServer, jwks: JwksServer
) -> None:
    """The whole schemathesis pipeline (examples, coverage, fuzzing) with every default check:
    not a server error, status codes and content types documented, responses matching their
    schemas, auth not ignored, 405 + Allow for undeclared methods, invalid data rejected."""
    with LocalServer(
        database_url=world.db_url, config=function_config(world.db_url, jwks.url)
    ) as server:
        schema = schemathesis.openapi.from_url(
            server.functions_url + "/openapi.json", config=CONFIG
        )

        @schema.hook("map_case")
        def aim(context: Any, case: Any) -> Any:
            aim_at_real_data(case, world.org)
            return case

        failures: list[str] = []
        errors: list[str] = []
        statuses: Counter[int] = Counter()
        operations = 0
        for event in from_schema(schema).execute():
            if isinstance(event, (events.ScenarioFinished, events.FuzzScenarioFinished)):
                operations += 1
                for interaction in event.recorder.interactions.values():
                    if interaction.response is not None:
                        statuses[interaction.response.status_code] += 1
                for checks in event.recorder.checks.values():
                    failures.extend(
                        f"{event.recorder.label}: {c.name}: {describe(c.failure_info.failure)}"
                        for c in checks
                        if c.status == Status.FAILURE and c.failure_info is not None
                    )
            elif isinstance(event, (events.NonFatalError, events.FatalError)):
                errors.append(str(getattr(event, "info", event))[:2000])
    assert not errors, "\n".join(errors)
    assert not failures, "\n".join(sorted(set(failures)))
    assert operations >= 11
    assert not any(s >= 500 for s in statuses), statuses
    assert statuses[200] > 50, statuses
