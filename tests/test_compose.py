"""docker-compose.yml: valid per the Compose Specification, safe defaults, and parity with local runs.

The parity test has no Docker: it runs the ``init``, two ``worker`` and the ``dashboard``
services' own entrypoints, commands and environments (interpolated as Compose would) as
local processes against the local PostgreSQL, with volumes mapped to temporary directories.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SCHEMA = ROOT.parent / "shared" / "compose-spec" / "compose-spec.json"
TEST_PG = os.environ.get("KILOTUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
ENV_EXAMPLE = ROOT / ".env.example"


def example_env() -> dict[str, str]:
    """The variables .env.example sets, as Compose would read them from .env."""
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line))
    return {k: v.strip() for k, v in pairs}


# --- Compose's variable interpolation ----------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


class MissingVariable(ValueError):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose's ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``... over a parsed file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        if m["named"]:
            return env.get(m["named"], "")
        name, op, arg = _BRACED.fullmatch(m["braced"]).group("name", "op", "arg")
        current = env.get(name)
        unset_or_empty = not current if op and op.startswith(":") else current is None
        if op in ("?", ":?") and unset_or_empty:
            raise MissingVariable(f"{name}: {arg}")
        if op in ("-", ":-"):
            return arg if unset_or_empty else current
        if op in ("+", ":+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _VARIABLE.sub(substitute, value)


# --- the file itself ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return interpolate(raw, example_env())


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"Compose schema not found at {SCHEMA}")
def test_validates_against_the_compose_specification(raw, compose):
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    for document in (raw, compose):  # as written and as Compose sees it after interpolation
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_current_specification_and_safe_defaults(raw, compose):
    assert "version" not in raw, "the Compose Specification dropped the top-level version"
    services = compose["services"]
    assert set(services) >= {"postgres", "init", "worker", "dashboard"}

    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker, "worker must scale with --scale worker=N"
    assert worker["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert worker["restart"] in ("on-failure", "unless-stopped")
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert _seconds(worker["stop_grace_period"]) >= 60, "longer than a worker's SIGTERM bound"
    assert {"/checkpoints", "/cache", "/data"} <= {v.split(":")[1] for v in worker["volumes"]}

    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16" and "ports" not in postgres
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any("max_connections=" in arg for arg in postgres["command"])
    assert any(v.startswith("pgdata:") for v in postgres["volumes"]) and "pgdata" in compose["volumes"]

    init = services["init"]
    assert init["restart"] == "no"
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"

    dashboard = services["dashboard"]
    assert dashboard["entrypoint"] == ["optuna-dashboard"]
    assert dashboard["ports"] and all(p.startswith("127.0.0.1:") for p in dashboard["ports"])
    assert "/api/studies" in " ".join(dashboard["healthcheck"]["test"])
    assert not any("container_name" in s for s in services.values())


def test_no_secret_in_the_file(raw):
    text = COMPOSE.read_text()
    assert "change-me" not in text
    # A password may only come from a variable: KEY: ${VAR...} or a URL's user:${VAR}@.
    for m in re.finditer(r"PASSWORD\s*(?::(?![?-])|=)\s*(\S+)", text):
        assert m.group(1).startswith("${"), f"password literal: {m.group(0)}"
    for m in re.finditer(r"://[^/\s@]*?:(\$\{[^}]*\}|[^@\s/]+)@", text):
        assert m.group(1).startswith("${POSTGRES_PASSWORD:?"), f"password literal in URL: {m.group(0)}"
    env = example_env()
    del env["POSTGRES_PASSWORD"]
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate(raw, env)


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


# --- parity: the services' own commands as local processes --------------------------------


def _dockerfile(instruction: str) -> str:
    """The last value of a Dockerfile instruction (ENTRYPOINT, CMD, WORKDIR)."""
    values = re.findall(rf"^{instruction}\s+(.+)$", DOCKERFILE.read_text(), re.M)
    return values[-1].strip()


class Service:
    """One compose service run as a local process: its argv, working directory and environment."""

    def __init__(self, name: str, spec: dict, volumes: dict[str, Path], pg_host: str, port_map: dict[str, str]) -> None:
        self.name = name
        entrypoint = spec.get("entrypoint", json.loads(_dockerfile("ENTRYPOINT")))
        command = spec.get("command", json.loads(_dockerfile("CMD")))
        workdir = spec.get("working_dir", _dockerfile("WORKDIR"))
        # The image holds this checkout at /opt/kilotune (COPY . . under WORKDIR /opt/kilotune).
        self.cwd = ROOT if workdir == "/opt/kilotune" else volumes.setdefault(workdir, volumes["_root"] / "home")
        self.cwd.mkdir(parents=True, exist_ok=True)
        mounts = {v.split(":")[1]: volumes[v.split(":")[0]] for v in spec.get("volumes", [])}

        def local(value: str) -> str:
            value = value.replace("@postgres:5432/", f"@{pg_host}/")
            for target, path in mounts.items():
                if value == target or value.startswith(target + "/"):
                    value = str(path) + value[len(target) :]
            return port_map.get(value, value)

        self.argv = [local(a) for a in entrypoint + command]
        environment = spec.get("environment", {})
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KILOTUNE_")}
        self.env.update({k: local(str(v)) for k, v in environment.items()})
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"

    def start(self, log_dir: Path) -> subprocess.Popen:
        log = open(log_dir / f"{self.name}-{uuid.uuid4().hex[:6]}.log", "w")
        return subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def database():
    """A fresh PostgreSQL database for the test, dropped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    from sqlalchemy.engine import make_url

    try:
        admin = psycopg2.connect(TEST_PG, connect_timeout=5)
    except psycopg2.OperationalError as e:
        pytest.skip(f"PostgreSQL not reachable at KILOTUNE_TEST_PG ({e})")
    admin.autocommit = True
    name = f"kilotune_compose_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(TEST_PG).set(database=name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _wait(processes: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in processes:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))


@pytest.mark.slow
def test_services_run_locally_fill_the_study_and_the_dashboard_lists_it(raw, database, tmp_path):
    from subset.datasets import DatasetError, load_dataset

    try:
        load_dataset("fashion-mnist")
    except DatasetError as e:
        pytest.skip(f"Fashion-MNIST is not installed: {e}")
    volumes = {name: tmp_path / "volumes" / name for name in raw["volumes"]}
    volumes["_root"] = tmp_path
    for path in volumes.values():
        path.mkdir(parents=True, exist_ok=True)
    logs = tmp_path / "logs"
    logs.mkdir()

    subset, space = tmp_path / "subset.json", tmp_path / "space.yaml"
    subprocess.run(["kilotune", "subset", "build", "--method", "random", "--dataset", "fashion-mnist", "--per-class", "10", "--out", str(subset)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    space.write_text("arch: vgg8\nwidth: 0.5\nbatch_size: 32\nmixing: none\noptimizer: sgd\n")
    env = example_env() | {
        "POSTGRES_USER": database.username,
        "POSTGRES_PASSWORD": database.password or "unused-with-trust-auth",
        "POSTGRES_DB": database.database,
        "KILOTUNE_STUDY": "parity",
        "KILOTUNE_DATASET": "fashion-mnist",
        "KILOTUNE_N_TRIALS": "3",
        "KILOTUNE_EPOCHS": "2",
        "KILOTUNE_SUBSET": str(subset),
        "KILOTUNE_SPACE": str(space),
    }
    services = interpolate(raw, env)["services"]
    pg_host = f"{database.host}:{database.port or 5432}"
    port = str(_free_port())
    container_port = services["dashboard"]["ports"][0].rsplit(":", 1)[1]
    port_map = {container_port: port, "0.0.0.0": "127.0.0.1"}

    init = Service("init", services["init"], volumes, pg_host, port_map).start(logs)
    assert init.wait(timeout=120) == 0, _logs(logs)
    workers = [Service("worker", services["worker"], volumes, pg_host, port_map).start(logs) for _ in range(2)]
    dashboard_service = Service("dashboard", services["dashboard"], volumes, pg_host, port_map)
    dashboard = dashboard_service.start(logs)
    try:
        _wait(workers, timeout=150)
        assert [w.returncode for w in workers] == [0, 0], _logs(logs)

        import optuna
        from optuna.trial import TrialState

        url = database.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
        study = optuna.load_study(study_name="parity", storage=url)
        assert len(study.trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
        assert {t.user_attrs["status"] for t in study.trials} <= {"complete", "pruned", "diverged"}
        assert len({t.user_attrs["worker"] for t in study.trials}) >= 1

        listed = _poll_studies(f"http://127.0.0.1:{port}/api/studies", dashboard, timeout=60)
        assert "parity" in [s["study_name"] for s in listed], _logs(logs)
        healthcheck = [port_map.get(a, a) for a in services["dashboard"]["healthcheck"]["test"][1:]]
        healthcheck = [a.replace(f":{container_port}/", f":{port}/") for a in healthcheck]
        assert subprocess.run(healthcheck, env=dashboard_service.env, timeout=30).returncode == 0
    finally:
        for p in [*workers, dashboard]:
            if p.poll() is None:
                p.terminate()
        _wait([*workers, dashboard], timeout=30)


def _poll_studies(url: str, process: subprocess.Popen, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "optuna-dashboard exited"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)["study_summaries"]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _logs(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(log_dir.glob("*.log")))
