"""deploy/k8s and docker/Dockerfile, checked offline: the manifests validate against Kubernetes'
own schemas (kubernetes-validate), file by file and as kubectl's kustomize renders them; every
reference in them resolves; they mirror docker-compose.yml; the password stays in a Secret; and
hadolint passes the Dockerfile.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import _unavailable
from tests.test_compose import COMPOSE, DOCKERFILE, _seconds, example_env, interpolate

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# The oldest release upstream still maintained when this was written (2026-12); the manifests
# use nothing newer, and kubernetes-validate bundles its schemas.
KUBERNETES_VERSION = "1.35.0"
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def tool(name: str) -> str:
    """A command the dev extra installs (beside this Python first: a venv need not be on PATH)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        _unavailable(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def schema_error(document: dict) -> str | None:
    """Why ``document`` is not a valid Kubernetes object (unknown fields included), or None."""
    try:
        import kubernetes_validate
    except ImportError:
        _unavailable("kubernetes-validate is not installed (pip install -e '.[dev]')")
    where = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{where}: {'.'.join(map(str, e.path))}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return f"{where}: {e.message}"
    return None


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def secret_example() -> dict[str, str]:
    lines = (K8S / "secret.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, secret_example) -> list[dict]:
    """``kubectl kustomize deploy/k8s``, with secret.env made from the example as a user would."""
    kubectl = tool("kubectl")
    base = tmp_path_factory.mktemp("deploy") / "k8s"
    shutil.copytree(K8S, base, ignore=shutil.ignore_patterns("secret.env"))  # never a developer's real one
    shutil.copy(base / "secret.env.example", base / "secret.env")
    result = subprocess.run([kubectl, "kustomize", str(base)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return documents(result.stdout)


def find(objects: list[dict], kind: str, name: str) -> dict:
    """The object of that kind whose name is ``name``, or whose generated name is ``name-<hash>``."""
    found = [o for o in objects if o["kind"] == kind and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", o["metadata"]["name"])]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    return [*pod(workload).get("initContainers", []), *pod(workload)["containers"]]


def main_container(objects: list[dict], kind: str, name: str) -> dict:
    (container,) = pod(find(objects, kind, name))["containers"]
    return container


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` in command, args and env values: a defined name is replaced, ``$$`` is a ``$``."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), value)


def data(source: dict) -> dict[str, str]:
    """A ConfigMap's or Secret's values as the containers see them."""
    if source["kind"] == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in source.get("data", {}).items()}
    return source.get("data", {})


def environment(container: dict, objects: list[dict]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom, then env in order, expanded."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ((ref_kind, ref),) = source.items()
        env.update(data(find(objects, {"configMapRef": "ConfigMap", "secretRef": "Secret"}[ref_kind], ref["name"])))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
            continue
        ((ref_kind, ref),) = var["valueFrom"].items()
        source = data(find(objects, {"configMapKeyRef": "ConfigMap", "secretKeyRef": "Secret"}[ref_kind], ref["name"]))
        assert ref["key"] in source, f"{container['name']}: {var['name']} names key {ref['key']!r}, not in {ref['name']}"
        env[var["name"]] = source[ref["key"]]
    return env


def argv(container: dict) -> list[str]:
    """What a container runs with, its probes included: all that `ps` or `kubectl describe` shows."""
    probes = [container.get(p, {}).get("exec", {}).get("command", []) for p in ("readinessProbe", "livenessProbe", "startupProbe")]
    return [*container.get("command", []), *container.get("args", []), *(a for p in probes for a in p)]


def mounts(workload: dict, container: dict) -> set[tuple[str, str, bool]]:
    """(claim, path, read-only) for each volume the container mounts."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod(workload).get("volumes", [])}
    claims |= {t["metadata"]["name"]: t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    return {(claims[m["name"]], m["mountPath"], m.get("readOnly", False)) for m in container.get("volumeMounts", [])}


# --- the files and the rendered service validate ----------------------------------------


def test_the_kustomization_lists_every_manifest_file_and_only_those(kustomization):
    assert MANIFESTS, f"no manifests in {K8S}"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS), "a manifest left out of kustomization.yaml, or listed but missing"
    generated = [f for g in (*kustomization["configMapGenerator"], *kustomization["secretGenerator"]) for f in g["envs"]]
    assert all((K8S / f).is_file() or f == "secret.env" for f in generated), generated
    assert {i["name"] for i in kustomization["images"]} == {"kilotune"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_each_manifest_file_validates_against_the_kubernetes_schemas(path):
    docs = documents(path.read_text())
    assert docs, f"{path.name} is empty"
    errors = [e for e in map(schema_error, docs) if e]
    assert not errors, "\n".join(errors)


def test_the_rendered_kustomization_validates_and_every_reference_resolves(rendered):
    errors = [e for e in map(schema_error, rendered) if e]
    assert not errors, "\n".join(errors)
    assert {"Namespace", "StatefulSet", "Service", "PersistentVolumeClaim", "Job", "Deployment", "ConfigMap", "Secret"} == {o["kind"] for o in rendered}
    assert {o["metadata"].get("namespace") for o in rendered if o["kind"] != "Namespace"} == {"kilotune"}

    claims = {o["metadata"]["name"] for o in rendered if o["kind"] == "PersistentVolumeClaim"}
    for workload in (o for o in rendered if o["kind"] in WORKLOADS):
        name = workload["metadata"]["name"]
        volumes = {v["name"] for v in pod(workload).get("volumes", [])} | {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        assert {v["persistentVolumeClaim"]["claimName"] for v in pod(workload).get("volumes", [])} <= claims, name
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"].get("selector", {}).get("matchLabels", {}).items() <= labels.items(), name
        for container in containers(workload):
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, (name, container["name"])
            env = environment(container, rendered)  # fails on a missing ConfigMap, Secret or key
            unresolved = [v for v in [*env.values(), *(expand(a, env) for a in argv(container))] if re.search(r"\$\([A-Za-z_]", v)]
            assert not unresolved, (name, container["name"], unresolved)
            if "KILOTUNE_STORAGE" in env:  # its host is a Service of this namespace, on a port it serves
                from sqlalchemy.engine import make_url

                url = make_url(env["KILOTUNE_STORAGE"])
                service = find(rendered, "Service", url.host)
                assert url.port in [p["port"] for p in service["spec"]["ports"]], url

    for service in (o for o in rendered if o["kind"] == "Service"):
        selected = [w for w in rendered if w["kind"] in WORKLOADS and service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"Service/{service['metadata']['name']} selects {len(selected)} workloads"
        ports = {p["name"] for c in pod(selected[0])["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, service["metadata"]["name"]


# --- the password ---------------------------------------------------------------------------


def test_the_password_is_only_referenced_never_inlined(kustomization, rendered, secret_example):
    password = secret_example["POSTGRES_PASSWORD"]
    assert [g["envs"] for g in kustomization["secretGenerator"]] == [["secret.env"]]
    committed = [p for p in K8S.iterdir() if p.is_file() and p.name not in ("secret.env", "secret.env.example")]
    assert not [p.name for p in committed if password in p.read_text()], "the example password outside the example"
    for path in MANIFESTS:
        docs = documents(path.read_text())
        assert "Secret" not in {d["kind"] for d in docs}, f"{path.name}: a Secret belongs in secret.env (secretGenerator)"
        for workload in (d for d in docs if d["kind"] in WORKLOADS):
            for container in containers(workload):
                for var in container.get("env", []):
                    if "PASSWORD" in var["name"]:
                        assert "secretKeyRef" in var.get("valueFrom", {}), f"{path.name}: {var['name']} not from the Secret"

    from sqlalchemy.engine import make_url

    for workload in (o for o in rendered if o["kind"] in WORKLOADS):
        for container in containers(workload):
            env = environment(container, rendered)
            if "KILOTUNE_STORAGE" in env:
                assert make_url(env["KILOTUNE_STORAGE"]).password == password, container["name"]
            # ...and only in an environment: on a command line `ps` would show it.
            shown = " ".join(expand(a, env) for a in argv(container))
            assert password not in shown and "PASSWORD" not in shown and "STORAGE" not in shown, (container["name"], shown)

    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "--no-index", "-q", "deploy/k8s/secret.env"], cwd=ROOT)
        assert ignored.returncode == 0, "git must ignore deploy/k8s/secret.env"
    assert "deploy" in (ROOT / ".dockerignore").read_text().split(), "secret.env must stay out of the image's build context"


# --- parity with docker-compose.yml ---------------------------------------------------------


def test_the_manifests_mirror_docker_compose(rendered, secret_example):
    """The same commands, settings (Compose's defaults), environments, volumes and grace periods."""
    env = {k: v for k, v in example_env().items() if k.startswith("POSTGRES_")} | secret_example
    services = interpolate(yaml.safe_load(COMPOSE.read_text()), env)["services"]  # the KILOTUNE_* defaults
    kinds = {"postgres": "StatefulSet", "init": "Job", "worker": "Deployment", "dashboard": "Deployment"}
    for name, kind in kinds.items():
        service, workload = services[name], find(rendered, kind, name)
        container = main_container(rendered, kind, name)
        k8s_env = environment(container, rendered)
        assert container["image"] == service["image"], name
        assert [expand(a, k8s_env) for a in container.get("args", [])] == service["command"], name
        assert container.get("command", []) == service.get("entrypoint", []), name
        assert container.get("workingDir") == service.get("working_dir"), name
        compose_env = {k: str(v) for k, v in service["environment"].items()}
        assert compose_env.items() <= k8s_env.items(), (name, dict(compose_env.items() - k8s_env.items()))
        volumes = {(v.split(":")[0], v.split(":")[1], v.endswith(":ro")) for v in service.get("volumes", [])}
        assert mounts(workload, container) == volumes, name
        if "stop_grace_period" in service:
            assert pod(workload)["terminationGracePeriodSeconds"] == _seconds(service["stop_grace_period"]), name
    assert main_container(rendered, "Deployment", "dashboard")["ports"][0]["containerPort"] == int(services["dashboard"]["ports"][0].rsplit(":", 1)[1])


def test_workers_take_a_gpu_stop_gracefully_and_share_checkpoints(rendered):
    workers = find(rendered, "Deployment", "worker")
    container = main_container(rendered, "Deployment", "worker")
    assert "nvidia.com/gpu" in container["resources"]["limits"]
    assert pod(workers)["terminationGracePeriodSeconds"] >= 60, "longer than a worker's SIGTERM path"
    checkpoints = environment(container, rendered)["KILOTUNE_CHECKPOINT_DIR"]
    (claim,) = [c for c, path, read_only in mounts(workers, container) if path == checkpoints and not read_only]
    assert "ReadWriteMany" in find(rendered, "PersistentVolumeClaim", claim)["spec"]["accessModes"], "a trial must resume on any node"
    assert "replicas" in workers["spec"] and workers["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_postgres_is_a_stateful_set_with_a_headless_service_and_pg_isready_probes(rendered):
    postgres = find(rendered, "StatefulSet", "postgres")
    container = main_container(rendered, "StatefulSet", "postgres")
    service = find(rendered, "Service", postgres["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert [t["metadata"]["name"] for t in postgres["spec"]["volumeClaimTemplates"]] == ["pgdata"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert "pg_isready" in " ".join(container[probe]["exec"]["command"]), probe
    env = environment(container, rendered)
    assert env["PGDATA"].startswith(container["volumeMounts"][0]["mountPath"] + "/"), "initdb refuses a mount point holding lost+found"
    from sqlalchemy.engine import make_url

    for name in ("init", "worker", "dashboard"):
        kind = "Job" if name == "init" else "Deployment"
        url = make_url(environment(main_container(rendered, kind, name), rendered)["KILOTUNE_STORAGE"])
        assert (url.username, url.database) == (env["POSTGRES_USER"], env["POSTGRES_DB"]), name


def test_the_dashboard_is_a_cluster_ip_service_ready_on_api_studies(rendered):
    service = find(rendered, "Service", "dashboard")
    assert service["spec"]["type"] == "ClusterIP"
    probe = main_container(rendered, "Deployment", "dashboard")["readinessProbe"]["httpGet"]
    assert probe["path"] == "/api/studies", "optuna-dashboard's static files 500 without Accept-Encoding"
    assert probe["port"] == service["spec"]["ports"][0]["targetPort"]


# --- the Dockerfile ---------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint():
    config = ROOT / ".hadolint.yaml"
    result = subprocess.run([tool("hadolint"), "--no-color", "--config", str(config), str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
