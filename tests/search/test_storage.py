"""The study's storage: its URL, opening it (a bare PostgreSQL URL, a restarting server), nothing created by reads."""

import pytest

from kilotune.cli.main import main
from kilotune.search.storage import open_storage, storage_url
from kilotune.search.study import create_study
from tests.search.test_settings import settings


def test_storage_url_precedence(monkeypatch):
    monkeypatch.delenv("KILOTUNE_STORAGE", raising=False)
    assert storage_url(None) == "sqlite:///kilotune.db"
    monkeypatch.setenv("KILOTUNE_STORAGE", "postgresql://h/db")
    assert storage_url(None) == "postgresql://h/db"
    assert storage_url("sqlite:///x.db") == "sqlite:///x.db"


def test_unreachable_storage_is_one_clear_line(capsys):
    code = main(["study", "list", "--storage", "postgresql+psycopg2://nobody:secret@127.0.0.1:1/none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("kilotune study: error: cannot open storage postgresql+psycopg2://nobody:***@127.0.0.1:1/none")
    assert "secret" not in err


def test_a_bare_postgresql_url_opens_with_the_installed_driver(pg_url):
    bare = "postgresql://" + pg_url.split("://", 1)[1]  # what users type; SQLAlchemy 2.1 would pick psycopg 3
    storage = open_storage(bare)
    assert storage.engine.dialect.driver == "psycopg2"
    study, created = create_study("bare-url", settings(), storage)
    assert created and study.study_name == "bare-url"


def test_opening_a_restarting_server_waits_for_it(monkeypatch, pg_url):
    # A worker that compose starts while PostgreSQL restarts met "server closed the connection
    # unexpectedly" and exited 2 (the chaos test, issue 17).
    import sqlalchemy

    import kilotune.search.storage as storage_module

    monkeypatch.setattr(storage_module.time, "sleep", lambda s: None)
    answers = ["server closed the connection unexpectedly", "the database system is starting up"]
    real = storage_module.RDBStorage

    def restarting(*args, **kwargs):
        if answers:
            raise sqlalchemy.exc.OperationalError("connect", {}, Exception(answers.pop(0)))
        return real(*args, **kwargs)

    monkeypatch.setattr(storage_module, "RDBStorage", restarting)
    assert isinstance(open_storage(pg_url), real) and answers == []


def test_a_worker_waits_for_a_server_that_refuses_connections_while_it_restarts(monkeypatch, pg_url):
    """Issue 25: a worker started while PostgreSQL restarts exited at once with "connection
    refused"; a command a user types still fails at once on a server that is not there."""
    import sqlalchemy

    import kilotune.search.storage as storage_module

    monkeypatch.setattr(storage_module.time, "sleep", lambda s: None)
    refused = 'connection to server at "127.0.0.1", port 5432 failed: Connection refused'
    answers, real = [refused, refused], storage_module.RDBStorage

    def down_then_up(*args, **kwargs):
        if answers:
            raise sqlalchemy.exc.OperationalError("connect", {}, Exception(answers.pop(0)))
        return real(*args, **kwargs)

    monkeypatch.setattr(storage_module, "RDBStorage", down_then_up)
    with pytest.raises(ValueError, match="Connection refused"):
        open_storage(pg_url)
    assert isinstance(open_storage(pg_url, patient=True), real) and answers == []


@pytest.mark.parametrize("command", [
    ["export", "--study", "s", "--out", "best.json"], ["report", "--study", "s", "--out", "r.html"], ["study", "list"],
    ["study", "delete", "--study", "s"], ["study", "extend", "--study", "s", "--n-trials", "3"], ["worker", "--study", "s"],
])  # fmt: skip
def test_a_command_that_reads_a_study_creates_no_database(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KILOTUNE_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    missing = tmp_path / "nonexistent.db"
    assert main([*command, "--storage", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{missing} does not exist" in err, err
    assert not missing.exists() and not (tmp_path / "best.json").exists()
