"""deploy/ checked as far as a machine without a container runtime allows.

The YAML parses; every `ingestd` subcommand and every variable the files name exists (in
services/cli.py, shared/config.py) and their values pass shared/config; the secret key of
pull sources reaches exactly the gateway and the sources stage, the same one to both, and
the command the files give to generate it makes a key shared/config accepts; compose's
depends_on and healthchecks fit together and its URLs name its own services; the config
files compose mounts exist and make the servers reachable from other containers; the
k8s probes name routes the gateway serves (/livez for liveness, /healthz for readiness)
on the port it listens on; every Secret / ConfigMap the manifests read is defined; the
build context deploy/Dockerfile.dockerignore leaves holds what the Dockerfile copies and
nothing else, and (slow) a wheel built from exactly that context holds the package with
its migrations, as `pip install .` in the image installs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from services.cli import main as cli
from services.gateway.app import create_app
from shared.config import Settings
from shared.errors import ConfigError
from shared.secrets import SecretBox

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
K8S: list[dict[str, Any]] = [
    doc
    for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
    for doc in yaml.safe_load_all(f.read_text())
    if doc
]
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
IMAGE = "ingestd:latest"
STAGES = {"gateway", "worker", "projector", "sources", "notifier"}
SECRET_KEY = "INGESTD_SECRET_KEY"
NEEDS_SECRET_KEY = {"gateway", "sources", "notifier"}  # routes seal, the stages open
EXAMPLE_KEY = SecretBox.generate_key()


def config_variables() -> set[str]:
    """Every variable shared/config.py reads (it is the only reader of the environment)."""
    source = (ROOT / "shared" / "config.py").read_text()
    return set(re.findall(r'"((?:INGESTD_[A-Z0-9_]+)|DATABASE_URL|REDIS_URL)"', source))


def kind(name: str) -> list[dict[str, Any]]:
    return [d for d in K8S if d["kind"] == name]


def containers() -> list[dict[str, Any]]:
    out = []
    for d in kind("Deployment") + kind("Job"):
        out.extend(d["spec"]["template"]["spec"]["containers"])
    return out


def ingestd_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in SERVICES.items() if s.get("image") == IMAGE}


def gateway_container() -> dict[str, Any]:
    [c] = [c for c in containers() if c["args"] == ["gateway"]]
    return c


def test_every_yaml_file_parses_into_named_objects() -> None:
    assert set(SERVICES) == {"postgres", "redis", "migrate", *STAGES}
    assert {d["kind"] for d in K8S} == {"ConfigMap", "Secret", "Job", "Deployment", "Service"}
    for d in K8S:
        assert d["apiVersion"] and d["metadata"]["name"], d


def test_every_subcommand_named_exists() -> None:
    commands = set(cli.commands)
    named = [s["command"] for s in ingestd_services().values()]
    named += [c["args"] for c in containers()]
    assert named and all(c[0] in commands for c in named), (named, commands)
    assert {c[0] for c in named} == {"migrate", *STAGES}
    assert all(c["image"] == IMAGE for c in containers())
    assert 'ENTRYPOINT ["ingestd"]' in DOCKERFILE
    assert 'ingestd = "services.cli:entry"' in (ROOT / "pyproject.toml").read_text()


SHELL_VALUES = {"INGESTD_ADMIN_TOKEN": "token", SECRET_KEY: EXAMPLE_KEY}


def interpolated(value: str) -> str:
    """What compose makes of ``${NAME:?message}`` with the shell's NAME set."""
    return re.sub(r"\$\{(\w+)[^}]*\}", lambda m: SHELL_VALUES[m.group(1)], value)


def compose_env(service: str) -> dict[str, str]:
    env = dict(SERVICES[service]["environment"])
    return {k: interpolated(str(v)) for k, v in env.items()}


def dockerfile_env() -> dict[str, str]:
    return dict(re.findall(r"^ENV (\w+)=(\S+)$", DOCKERFILE, re.M))


def test_every_variable_named_exists_and_is_valid() -> None:
    known = config_variables()
    assert {"DATABASE_URL", "REDIS_URL", "INGESTD_ADMIN_TOKEN"} <= known
    [configmap] = kind("ConfigMap")
    [secret] = [d for d in kind("Secret") if d["metadata"]["name"] == "ingestd"]
    for names in (
        *(compose_env(s) for s in ingestd_services()),
        configmap["data"],
        *(d["stringData"] for d in kind("Secret")),
        dockerfile_env(),
    ):
        assert set(names) <= known, set(names) - known
    for s in ingestd_services():
        settings = Settings.from_env({**dockerfile_env(), **compose_env(s)})
        settings.require_servers()
        assert settings.http_host == "0.0.0.0"  # reachable from outside the container
    example = {
        "DATABASE_URL": "postgresql://ingestd:pw@db.internal:5432/ingestd",
        "REDIS_URL": "redis://redis.internal:6379/0",
        "INGESTD_ADMIN_TOKEN": "t",
    }
    assert set(example) == set(secret["stringData"])
    Settings.from_env({**dockerfile_env(), **configmap["data"], **example}).require_servers()
    # the Secret as shipped (empty): every stage stops with a clear configuration error
    unfilled = Settings.from_env({**configmap["data"], **secret["stringData"]})
    with pytest.raises(ConfigError, match="DATABASE_URL and REDIS_URL must be set"):
        unfilled.require_servers()


def depends_on(service: str) -> dict[str, str]:
    deps = SERVICES[service].get("depends_on") or {}
    return {name: spec["condition"] for name, spec in deps.items()}


def needs(service: str) -> set[tuple[str, str]]:
    """Every (service, condition) a service waits for, directly or through others."""
    out: set[tuple[str, str]] = set()
    for name, condition in depends_on(service).items():
        out |= {(name, condition)} | needs(name)
    return out


def test_compose_dependencies_and_healthchecks_fit() -> None:
    for service in SERVICES:
        for name, condition in depends_on(service).items():
            assert name in SERVICES, (service, name)
            if condition == "service_healthy":
                assert SERVICES[name].get("healthcheck"), (service, name)
            else:
                assert condition == "service_completed_successfully", condition
                assert SERVICES[name]["restart"] == "no", name  # it runs once and exits
    ready = {("postgres", "service_healthy"), ("redis", "service_healthy")}
    assert ready <= needs("migrate")
    for stage in STAGES:
        assert ready | {("migrate", "service_completed_successfully")} <= needs(stage)
        assert SERVICES[stage]["restart"] == "unless-stopped"


def test_compose_urls_name_its_own_servers() -> None:
    pg = SERVICES["postgres"]["environment"]
    for s in ingestd_services():
        env = compose_env(s)
        db = urlsplit(env["DATABASE_URL"])
        assert (db.hostname, db.port, db.path) == ("postgres", 5432, f"/{pg['POSTGRES_DB']}")
        assert (db.username, db.password) == ("postgres", pg["POSTGRES_PASSWORD"])
        r = urlsplit(env["REDIS_URL"])
        assert (r.hostname, r.port) == ("redis", 6379)


def mounted(service: str, target: str) -> Path:
    """The file of deploy/ that compose mounts at ``target`` in ``service``."""
    for volume in SERVICES[service]["volumes"]:
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            path = (DEPLOY / source).resolve()
            assert path.is_file(), volume
            return path
    raise AssertionError(f"{target} is not mounted in {service}")


def settings_of(conf: Path) -> dict[str, str]:
    out = {}
    for line in conf.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.replace("=", " ", 1).partition(" ")
            out[key.strip()] = value.strip()
    return out


def test_the_servers_compose_starts_are_reachable_and_durable() -> None:
    command = SERVICES["postgres"]["command"]
    [config_file] = [a.split("=", 1)[1] for a in command if a.startswith("config_file=")]
    pg = settings_of(mounted("postgres", config_file))
    # a config_file replaces the stock one: without this PostgreSQL listens on localhost
    assert pg["listen_addresses"] == "'*'"
    assert pg["synchronous_commit"] == "on"
    redis_conf = mounted("redis", SERVICES["redis"]["command"][1])
    assert redis_conf == DEPLOY / "redis.conf"
    redis = settings_of(redis_conf)
    assert (redis["appendonly"], redis["appendfsync"]) == ("yes", "everysec")  # README
    assert redis["maxmemory-policy"] == "noeviction"
    assert "bind" not in redis  # the image's default: every interface


def gateway_routes() -> set[str]:
    app = create_app(Settings.from_env({"INGESTD_ADMIN_TOKEN": "t"}))
    return {r.canonical for r in app.router.resources()}


def test_probes_name_routes_the_gateway_serves_on_its_port() -> None:
    routes = gateway_routes()
    gateway = gateway_container()
    ready, alive = gateway["readinessProbe"]["httpGet"], gateway["livenessProbe"]["httpGet"]
    assert (ready["path"], alive["path"]) == ("/healthz", "/livez")
    assert {ready["path"], alive["path"]} <= routes
    [configmap] = kind("ConfigMap")
    [port] = gateway["ports"]
    port_number = int(configmap["data"]["INGESTD_HTTP_PORT"])
    assert ready["port"] == alive["port"] == port["containerPort"] == port_number
    [service] = kind("Service")
    [deployment] = [d for d in kind("Deployment") if gateway in containers_of(d)]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"][0]["targetPort"] == port_number
    # compose: the gateway's healthcheck asks a route on the port it publishes
    check = " ".join(SERVICES["gateway"]["healthcheck"]["test"])
    url = urlsplit(re.search(r"http://[^'\" ]+", check).group(0))  # type: ignore[union-attr]
    assert url.path in routes
    assert SERVICES["gateway"]["ports"] == [f"{url.port}:{url.port}"]
    assert url.port == Settings.from_env(compose_env("gateway")).http_port


def containers_of(d: dict[str, Any]) -> list[dict[str, Any]]:
    return list(d["spec"]["template"]["spec"]["containers"])


def secret_data(name: str) -> dict[str, str]:
    [secret] = [d for d in kind("Secret") if d["metadata"]["name"] == name]
    return dict(secret["stringData"])


def k8s_env_names(container: dict[str, Any]) -> set[str]:
    """The variables a container's envFrom brings in (ConfigMaps and Secrets)."""
    out: set[str] = set()
    for source in container["envFrom"]:
        ((ref, spec),) = source.items()
        wanted = {"configMapRef": "ConfigMap", "secretRef": "Secret"}[ref]
        [d] = [d for d in kind(wanted) if d["metadata"]["name"] == spec["name"]]
        out |= set(d.get("data") or d.get("stringData") or {})
    return out


def test_the_secret_key_reaches_the_gateway_and_the_sources_stage_alone() -> None:
    with_key = {s for s in ingestd_services() if SECRET_KEY in compose_env(s)}
    assert with_key == NEEDS_SECRET_KEY
    # one shell variable, so the same key on both (compose fails without it)
    given = {str(SERVICES[s]["environment"][SECRET_KEY]) for s in with_key}
    assert given == {"${INGESTD_SECRET_KEY:?set INGESTD_SECRET_KEY}"}
    for s in with_key:
        settings = Settings.from_env({**dockerfile_env(), **compose_env(s)})
        assert settings.secret_key == EXAMPLE_KEY
    k8s = {c["args"][0] for c in containers() if SECRET_KEY in k8s_env_names(c)}
    assert k8s == NEEDS_SECRET_KEY
    [holder] = [d for d in kind("Secret") if SECRET_KEY in d["stringData"]]  # one Secret
    assert holder["stringData"] == {SECRET_KEY: ""}
    # the shipped Secret left empty: the stages start as without a key (the sources
    # stage then stops with its configuration error)
    assert Settings.from_env(holder["stringData"]).secret_key is None


def test_the_key_generating_command_given_makes_a_valid_key() -> None:
    text = (DEPLOY / "compose.yaml").read_text() + (DEPLOY / "k8s" / "secret.yaml").read_text()
    [command] = set(re.findall(r"openssl rand -base64 32 \| tr '\+/' '-_'", text))
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    for _ in range(20):  # keys with and without the characters tr changes
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
        key = done.stdout.strip()
        assert Settings.from_env({SECRET_KEY: key}).secret_key == key


def test_every_configmap_and_secret_read_is_defined() -> None:
    defined = {(d["kind"], d["metadata"]["name"]) for d in K8S}
    for c in containers():
        for source in c["envFrom"]:
            ((ref, spec),) = source.items()
            wanted = {"configMapRef": "ConfigMap", "secretRef": "Secret"}[ref]
            assert (wanted, spec["name"]) in defined, source


# --- the build context -------------------------------------------------------------------


def _pattern(p: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(p):
        if p.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif p.startswith("**", i):
            out += ".*"
            i += 2
        elif p[i] == "*":
            out += "[^/]*"
            i += 1
        elif p[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(p[i])
            i += 1
    return re.compile(out)


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _pattern(line.lstrip("!").strip("/"))))
    return rules


def in_context(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, pattern in ignore_rules():
        if any(pattern.fullmatch(p) for p in prefixes):
            included = negated
    return included


def checkout_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [f for f in listed if (ROOT / f).is_file()]


def copied() -> list[str]:
    """The sources of the Dockerfile's COPY lines."""
    out = []
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.M):
        out.extend(line.split()[:-1])
    return out


def test_the_build_context_holds_what_the_image_needs_and_nothing_else() -> None:
    assert copied() == ["pyproject.toml", "README.md", "services", "shared"]
    context = [f for f in checkout_files() if in_context(f)]
    for source in copied():
        assert any(f == source or f.startswith(source + "/") for f in context), source
    assert "shared/pg/migrations/0000_schema_migrations.sql" in context
    for f in context:
        assert f in ("pyproject.toml", "README.md") or f.split("/")[0] in ("services", "shared")
    for outside in (".venv/bin/python", ".ingestd/admin-token", ".git/HEAD", "tests/conftest.py",
                    "services/__pycache__/cli.cpython-311.pyc", "deploy/compose.yaml"):  # fmt: skip
        assert not in_context(outside), outside


@pytest.mark.slow  # builds a wheel (pip fetches setuptools for the build)
def test_the_image_installs_the_package_with_its_migrations(tmp_path: Path) -> None:
    """`pip install .` in the image, as far as it goes here: a wheel built from exactly the
    build context holds every module, the migrations and the `ingestd` command."""
    context = tmp_path / "context"
    for f in checkout_files():
        if in_context(f):
            (context / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, context / f)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = tmp_path.glob("ingestd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = {
        f"shared/pg/migrations/{p.name}" for p in (ROOT / "shared/pg/migrations").glob("*.sql")
    }
    assert migrations and migrations <= names
    assert {"services/cli.py", "services/dev.py", "shared/config.py"} <= names
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "ingestd = services.cli:entry" in zipfile.ZipFile(wheel).read(entry_points).decode()
