"""The test fixtures' own guarantees: what the service tests rely on between tests."""

import optuna

from tests.conftest import shared_storage


def test_the_shared_storage_survives_the_end_of_idle_connections_between_tests(pg_server):
    # After each test, the run ends the idle connections to its databases (``end_idle_connections``);
    # the next test's poll through the cached storage must reconnect, not fail on a closed connection.
    url = pg_server()
    optuna.create_study(study_name="survivor", storage=shared_storage(url))
    assert optuna.get_all_study_names(shared_storage(url)) == ["survivor"]
    pg_server.end_idle_connections()
    assert optuna.get_all_study_names(shared_storage(url)) == ["survivor"]
