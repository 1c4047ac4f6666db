"""The API against its own OpenAPI schema: Schemathesis generates requests (valid and invalid)
for every operation and runs all its checks on the answers (status codes documented, bodies and
headers as declared, invalid input rejected, valid input accepted, 405s with Allow...).

Against the real app on the fixture database (real tokenizer, model and SAE: inference and
steering run); derandomized, so a failure replays.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from appdb import FixtureDB
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from app.main import create_app
from app.settings import Settings

EXAMPLES_PER_OPERATION = 200


@pytest.fixture(scope="module")
def api_schema(fixture_db: FixtureDB) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(Settings(database_url=fixture_db.url))
    with TestClient(app):  # runs the lifespan: the engine, the live executor
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate()
