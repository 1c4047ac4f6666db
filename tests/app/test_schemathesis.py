"""The API against its own OpenAPI schema: Schemathesis generates requests (valid and invalid)
for every operation and runs all its checks on the answers (status codes documented, bodies and
headers as declared, invalid input rejected, valid input accepted, 405s with Allow...).

Against the real app on the fixture database (real tokenizer, model and SAE: inference and
steering run); derandomized, so a failure replays.
"""

from __future__ import annotations

import pytest
import schemathesis
from appdb import FixtureDB
from hypothesis import HealthCheck, settings

from app.main import create_app
from app.settings import Settings

EXAMPLES_PER_OPERATION = 200

# The schema is read from the app itself at import; Schemathesis starts the app's lifespan at its
# first request, after `use_fixture_db` has pointed the app at the fixture database.
app = create_app(Settings(database_url="sqlite:///set-by-use-fixture-db.db"))
schema = schemathesis.openapi.from_dict(app.openapi())
schema.app = app


@pytest.fixture(autouse=True, scope="module")
def use_fixture_db(fixture_db: FixtureDB) -> None:
    app.state.settings = Settings(database_url=fixture_db.url)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate()
