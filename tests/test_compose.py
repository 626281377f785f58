"""docker-compose.yml: valid per the Compose Specification, safe defaults, and parity with local runs.

The parity test has no Docker: it runs the ``init``, two ``worker`` and the ``dashboard``
services' own entrypoints, commands and environments (interpolated as Compose would) as
local processes against the local PostgreSQL, with volumes mapped to temporary directories.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import cpu_progress, study_progress, wait_for, wait_for_exit

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SCHEMA = ROOT.parent / "shared" / "compose-spec" / "compose-spec.json"
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


@pytest.mark.skipif(not SCHEMA.is_file(), reason=(
    f"{SCHEMA} not found: the Compose Specification's JSON schema (schema/compose-spec.json of "
    "github.com/compose-spec/compose-spec at commit 170098b, Apache-2.0), which engineers and CI have in ../shared/ "
    "beside the checkout; put a copy there to validate docker-compose.yml offline"))
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
    assert "entrypoint" not in dashboard and dashboard["command"][0] == "dashboard", "kilotune dashboard, as the image's entrypoint"
    assert "KILOTUNE_STORAGE" in dashboard["environment"]
    assert dashboard["ports"] and all(p.startswith("127.0.0.1:") for p in dashboard["ports"])
    assert "/api/studies" in " ".join(dashboard["healthcheck"]["test"])
    assert not any("container_name" in s for s in services.values())


def test_no_secret_in_the_file(raw):
    text = COMPOSE.read_text()
    assert "change-me" not in text
    # A password may only come from a variable: KEY: ${VAR...}.
    for m in re.finditer(r"PASSWORD\s*(?::(?![?-])|=)\s*(\S+)", text):
        assert m.group(1).startswith("${"), f"password literal: {m.group(0)}"
    # Every URL with credentials gets its password from POSTGRES_PASSWORD and nowhere else.
    from sqlalchemy.engine import make_url

    sentinel = "pw-from-the-environment"
    urls = [v for v in _strings(interpolate(raw, example_env() | {"POSTGRES_PASSWORD": sentinel})) if "://" in v and "@" in v]
    assert urls, "the storage URL should be found"
    for url in urls:
        assert make_url(url).password == sentinel, url
    # ...and only in an environment: on a command line `ps` and `docker inspect` would show it.
    services = interpolate(raw, example_env() | {"POSTGRES_PASSWORD": sentinel})["services"]
    for name, service in services.items():
        argv = [*service.get("entrypoint", []), *service.get("command", []), *service.get("healthcheck", {}).get("test", [])]
        assert not any(sentinel in str(a) for a in argv), (name, argv)
    env = example_env()
    del env["POSTGRES_PASSWORD"]
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate(raw, env)


def _strings(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


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

    def __init__(self, name: str, spec: dict, *, volumes: dict[str, Path], home: Path, pg_host: str, port_map: dict[str, str]) -> None:
        self.name = name
        entrypoint = spec.get("entrypoint", json.loads(_dockerfile("ENTRYPOINT")))
        command = spec.get("command", json.loads(_dockerfile("CMD")))
        workdir = spec.get("working_dir", _dockerfile("WORKDIR"))
        # The image holds this checkout at /opt/kilotune (COPY . . under WORKDIR /opt/kilotune);
        # its other working directory is the user's home.
        self.cwd = ROOT if workdir == "/opt/kilotune" else home
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
        with open(log_dir / f"{self.name}-{uuid.uuid4().hex[:6]}.log", "w") as log:  # the child keeps its copy
            return subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(processes: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in processes:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))


@pytest.mark.slow
def test_services_run_locally_fill_the_study_and_the_dashboard_lists_it(raw, pg_url, fashion_subset, tmp_path):
    from sqlalchemy.engine import make_url

    database = make_url(pg_url)  # a database of this test run (tests/conftest.py)
    volumes = {name: tmp_path / "volumes" / name for name in raw["volumes"]}
    home, logs = tmp_path / "home", tmp_path / "logs"
    for path in (*volumes.values(), home, logs):
        path.mkdir(parents=True)

    space = tmp_path / "space.yaml"
    space.write_text("arch: vgg8\nwidth: 0.5\nbatch_size: 32\nmixing: none\noptimizer: sgd\n")
    env = example_env() | {
        "POSTGRES_USER": database.username,  # trust auth ignores a password that is not needed
        "POSTGRES_PASSWORD": database.password or "unused-with-trust-auth",  # looked for on the command lines below
        "POSTGRES_DB": database.database,
        "KILOTUNE_STUDY": "parity",
        "KILOTUNE_DATASET": "fashion-mnist",
        "KILOTUNE_N_TRIALS": "12",  # 8 search trials, the top 2 of them on 2 more folds
        "KILOTUNE_EPOCHS": "2",
        "KILOTUNE_SUBSET": str(fashion_subset),
        "KILOTUNE_SPACE": str(space),
    }
    services = interpolate(raw, env)["services"]
    pg_host = f"{database.host}:{database.port or 5432}"
    port = str(_free_port())
    container_port = services["dashboard"]["ports"][0].rsplit(":", 1)[1]
    local = dict(volumes=volumes, home=home, pg_host=pg_host, port_map={container_port: port, "0.0.0.0": "127.0.0.1"})

    # Every wait is bounded by progress (CPU time used, trials and epochs stored), not by the clock:
    # on a loaded machine the services are slower, not failed.
    init = Service("init", services["init"], **local).start(logs)
    wait_for_exit([init], 120, "the init service")
    assert init.returncode == 0, _logs(logs)
    workers = [Service("worker", services["worker"], **local).start(logs) for _ in range(2)]
    dashboard_service = Service("dashboard", services["dashboard"], **local)
    dashboard = dashboard_service.start(logs)
    try:
        password = env["POSTGRES_PASSWORD"]
        for process in (*workers, dashboard):
            cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode(errors="replace")
            assert password not in cmdline and "postgresql" not in cmdline, cmdline
        wait_for_exit(workers, 300, "the worker services", progress=study_progress(pg_url, "parity"))
        assert [w.returncode for w in workers] == [0, 0], _logs(logs)

        import optuna
        from optuna.trial import TrialState

        from optuna_dashboard import get_note

        study = optuna.load_study(study_name="parity", storage=pg_url)
        search, fold_trials = study.trials, optuna.load_study(study_name="parity.cv", storage=pg_url).trials
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in [*search, *fold_trials])
        # Once the 8 search trials have finished, the best 2 train on folds 1-2, in the companion study.
        folds = sorted((t.user_attrs["cv_of"], t.user_attrs["fold"]) for t in fold_trials)
        top = sorted((t for t in search if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))[:2]
        assert len(search) == 8 and folds == sorted((t.number, f) for t in top for f in (1, 2)), folds
        assert {t.user_attrs["status"] for t in [*search, *fold_trials]} <= {"complete", "pruned", "diverged"}
        assert all("worker" in t.user_attrs and "config" in t.user_attrs for t in [*search, *fold_trials])
        assert "## kilotune winner: trial" in get_note(study) and "over 3 folds" in get_note(study), "the workers wrote the winner's note"

        listed = _poll_studies(f"http://127.0.0.1:{port}/api/studies", dashboard)
        assert {"parity", "parity.cv"} <= {s["study_name"] for s in listed}, _logs(logs)
        # The compose healthcheck itself (after its CMD marker), pointed at the local port.
        healthcheck = [a.replace(f":{container_port}/", f":{port}/") for a in services["dashboard"]["healthcheck"]["test"][1:]]
        assert subprocess.run(healthcheck, env=dashboard_service.env, timeout=30).returncode == 0
    finally:
        for p in [*workers, dashboard]:
            if p.poll() is None:
                p.terminate()
        _wait([*workers, dashboard], timeout=30)


def _poll_studies(url: str, process: subprocess.Popen) -> list[dict]:
    """The dashboard's study list, once it answers; bounded by the dashboard's progress (CPU time)."""

    def studies() -> list[dict] | None:
        assert process.poll() is None, "optuna-dashboard exited"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)["study_summaries"] or None
        except OSError:
            return None

    return wait_for(studies, 60, f"optuna-dashboard to answer at {url}", poll_s=1.0, progress=cpu_progress([process]))


def _logs(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(log_dir.glob("*.log")))


def test_the_image_leaves_tensorflows_log_level_to_kilotune():
    """An image-wide TF_CPP_MIN_LOG_LEVEL=2 let every CPU-only worker print "failed call to cuInit"."""
    assert "TF_CPP_MIN_LOG_LEVEL" not in DOCKERFILE.read_text()



def test_the_schema_skip_says_what_the_file_is_and_where_it_comes_from(tmp_path):
    """The fast suite's one skip, in a checkout with no ../shared beside it: it named a path outside
    the checkout and nothing else."""
    checkout = tmp_path / "kilotune"
    (checkout / "tests").mkdir(parents=True)
    for name in ("tests/__init__.py", "tests/conftest.py", "tests/test_compose.py", "pyproject.toml"):
        shutil.copy(ROOT / name, checkout / name)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_compose.py",
                          "-k", "validates_against"], cwd=checkout, capture_output=True, text=True, timeout=120)  # fmt: skip
    (skip,) = [line for line in out.stdout.splitlines() if line.startswith("SKIPPED")]
    assert "Compose Specification's JSON schema" in skip and "github.com/compose-spec/compose-spec" in skip, skip
    assert str(tmp_path / "shared" / "compose-spec" / "compose-spec.json") in skip and "put a copy there" in skip, skip
