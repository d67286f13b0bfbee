"""What the deployment files promise an operator: secrets generated once, only ingest published,
health-gated start-up, Chromium only in dispatch's image, probes and budgets on Kubernetes."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import stat
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import yaml

from shvya_common.crypto import SecretBox

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "engage", "dispatch", "scheduler")


def compose_env() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compose_env", ROOT / "deploy/compose_env.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def env_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#"):
            values[name] = value
    return values


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> the Dockerfile text of that stage."""
    text = (ROOT / "deploy/Dockerfile").read_text()
    parts = re.split(r"^FROM \S+ AS (\S+)\n", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def k8s_base() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / "deploy/k8s/base").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_compose_env_writes_every_secret_once_and_keeps_existing_ones(tmp_path: Path):
    """A fresh .env gets all secrets (mode 0600); a second run adds nothing; a set token stays."""
    env = tmp_path / ".env"
    env.write_text("ADMIN_TOKEN=kept-token-from-make-up\nOPENAI_API_KEY=\n")
    module = compose_env()
    added = module.fill(env)
    assert "ADMIN_TOKEN" not in added
    assert set(added) == set(module.SECRETS) - {"ADMIN_TOKEN"}
    assert module.fill(env) == []
    values = env_values(env)
    assert values["ADMIN_TOKEN"] == "kept-token-from-make-up"
    assert all(values[name] for name in module.SECRETS)

    fresh = tmp_path / "fresh.env"
    module.fill(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_generated_secrets_fit_where_the_services_use_them(tmp_path: Path):
    """The keyring parses as SECRETS_KEYS and passwords need no escaping inside a URL."""
    env = tmp_path / ".env"
    compose_env().fill(env)
    values = env_values(env)
    assert SecretBox.from_setting(values["SECRETS_KEYS"]).primary_id == "k1"
    for name in ("POSTGRES_PASSWORD", "NATS_PASSWORD", "NATS_SYSTEM_PASSWORD"):
        url = f"postgresql://shvya:{values[name]}@postgres:5432/shvya"
        assert urlsplit(url).password == values[name]
    assert len(values["ADMIN_TOKEN"]) >= 16


def test_only_ingest_is_published_and_the_rest_bind_to_loopback():
    """Ingest's 8000 is the one port on every interface; Grafana/Prometheus bind 127.0.0.1."""
    published = {
        name: service["ports"]
        for name, service in compose()["services"].items()
        if "ports" in service
    }
    assert published.pop("ingest") == ["8000:8000"]
    for name, ports in published.items():
        assert all(str(p).startswith("127.0.0.1:") for p in ports), name
        assert compose()["services"][name].get("profiles"), f"{name} publishes by default"


def test_services_start_once_their_dependencies_are_healthy_and_have_healthchecks():
    """Each service has a healthcheck and waits for NATS and PostgreSQL to be healthy."""
    services = compose()["services"]
    for name in SERVICES:
        service = services[name]
        assert service["build"]["target"] == name
        assert service["healthcheck"]["test"][:2] == ["CMD", "python"]
        for dependency in ("nats", "postgres"):
            assert service["depends_on"][dependency] == {"condition": "service_healthy"}
    assert "/readyz" in services["ingest"]["healthcheck"]["test"][-1]
    assert "healthcheck" in services["nats"] and "healthcheck" in services["postgres"]


def test_nats_is_configured_from_a_file_with_credentials_the_services_use():
    """NATS reads deploy/nats/nats.conf, and every service's NATS_URL carries user and password."""
    services = compose()["services"]
    assert "./deploy/nats/nats.conf:/etc/nats/shvya.conf:ro" in services["nats"]["volumes"]
    conf = (ROOT / "deploy/nats/nats.conf").read_text()
    assert "user: shvya, password: $NATS_PASSWORD" in conf and "jetstream" in conf
    for name in SERVICES:
        url = services[name]["environment"]["NATS_URL"]
        assert url.startswith("nats://shvya:${NATS_PASSWORD:?") and url.endswith("@nats:4222")


def test_chromium_is_only_in_dispatchs_image_and_uv_only_in_build_stages():
    """Runtime stages copy the venv from a build stage; only dispatch installs Chromium."""
    stages = dockerfile_stages()
    for name in SERVICES:
        assert f"COPY --from=build-{name} /app/.venv /app/.venv" in stages[name]
        assert ("chromium" in stages[name]) == (name == "dispatch")
        assert "uv " not in stages[name] and "USER 10001:10001" in stages[name]
    assert "uv " not in stages["runtime"] and "tini" in stages["runtime"]
    for name in SERVICES:
        build = stages[f"build-{name}"]
        # Dependencies from the lock first, in their own layer; the source comes after.
        assert build.index("--no-install-workspace") < build.index("COPY libs/common/src")


def test_the_build_context_keeps_secrets_and_data_out():
    """.dockerignore excludes .env, .data, .venv, .tools, .git and caches."""
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".data/", ".venv/", ".tools/", ".git/", ".mypy_cache/", ".ruff_cache/"):
        assert entry in ignored


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` out of the build context: the last pattern that
    matches it or one of its parents wins, and `!` brings a path back (Docker's rules)."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            out = not keep
    return out


def test_every_file_the_dockerfile_copies_is_in_the_build_context():
    """A COPY from the context of a path .dockerignore leaves out fails the build: every source
    exists and is sent (`deploy/` is ignored, its `wa-js/` brought back for dispatch's image)."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    assert "deploy/wa-js" in sources and len(sources) > 10
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is left out of the build context"
    assert _ignored("deploy/k8s", patterns) and _ignored(".env", patterns)


def test_every_kubernetes_deployment_has_probes_requests_a_budget_and_an_autoscaler():
    """Each service: three probes, resource requests, non-root, a PDB and an HPA."""
    docs = k8s_base()
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    for name in SERVICES:
        deployment = by_kind["Deployment"][f"shvya-{name}"]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in container, (name, probe)
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert {"secretRef": {"name": "shvya-secrets"}} in container["envFrom"]
        assert f"shvya-{name}" in by_kind["PodDisruptionBudget"]
        assert (
            by_kind["HorizontalPodAutoscaler"][f"shvya-{name}"]["spec"]["scaleTargetRef"]["name"]
            == f"shvya-{name}"
        )
    readiness = by_kind["Deployment"]["shvya-ingest"]["spec"]["template"]["spec"]["containers"][0]
    assert readiness["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_cluster_overlay_and_the_nats_values_agree_on_three_replicas():
    """The cluster overlay sets NATS_STREAM_REPLICAS=3; the NATS chart values run 3 servers."""
    overlay = (ROOT / "deploy/k8s/overlays/cluster/kustomization.yaml").read_text()
    assert re.search(r"path: /data/NATS_STREAM_REPLICAS\s+value: \"3\"", overlay)
    values = yaml.safe_load((ROOT / "deploy/nats-values.yaml").read_text())
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["jetstream"]["fileStore"]["pvc"]["enabled"] is True
