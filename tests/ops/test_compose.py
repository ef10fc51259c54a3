"""docker/compose.yaml: valid under the Compose Specification, and sound where a schema cannot see.

No Docker engine or compose plugin is needed: the schema is vendored (tests/ops/data/README.md).
Where `docker compose` exists, its own `config` check runs as well.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml

from appliance.cli import cli
from appliance.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
APPLIANCE_SERVICES = ("appliance", "ingest-watch")
HOME = "/var/lib/appliance"
# A reference to a variable with no default: `${VAR}` or `${VAR:?message}`.
_BARE_VARIABLE = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?\?[^}]*)?\}$")
# SOURCE:TARGET[:MODE], where SOURCE may be `${VAR:-default}` (whose default may hold a colon).
_SHORT_VOLUME = re.compile(r"^((?:\$\{[^}]*\})?[^:]*):(/[^:]*)(?::([a-z,]+))?$")
_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|PASSWORD|CREDENTIAL|PRIVATE|_KEY\b|ACCESS_KEY", re.I)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each short-syntax volume."""
    found = []
    for spec in service.get("volumes", []):
        match = _SHORT_VOLUME.match(spec)
        assert match, f"cannot read the volume {spec!r}"
        source, target, mode = match.groups()
        found.append((source, target, "ro" in (mode or "").split(",")))
    return found


# -- the schema ---------------------------------------------------------------------------------


def test_the_vendored_schema_is_itself_a_valid_json_schema() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft201909Validator.check_schema(schema)
    assert schema["title"] == "Compose Specification"


def test_compose_file_validates_against_the_compose_specification(compose: dict) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert errors == []


def test_the_schema_rejects_a_broken_compose_file(compose: dict) -> None:
    """The validation has teeth: a misspelt key and a bad depends_on condition are refused."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    broken = json.loads(json.dumps(compose))
    broken["services"]["appliance"]["helthcheck"] = broken["services"]["appliance"]["healthcheck"]
    broken["services"]["appliance"]["depends_on"]["milvus"]["condition"] = "service_ready"
    assert len(list(validator.iter_errors(broken))) >= 2


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client on this machine")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker client has no compose plugin here; the schema tests above cover it")
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path)}
    env |= {"MINIO_ROOT_USER": "test-user", "MINIO_ROOT_PASSWORD": "test-password-1"}
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


# -- what the schema cannot check ---------------------------------------------------------------


def test_every_service_has_a_health_check(compose: dict) -> None:
    for name, service in services(compose).items():
        check = service.get("healthcheck") or {}
        assert not check.get("disable"), name
        test = check.get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, name


def test_the_appliance_waits_for_a_healthy_milvus_and_milvus_for_its_stores(compose: dict) -> None:
    svc = services(compose)
    for name in APPLIANCE_SERVICES:
        assert svc[name]["depends_on"]["milvus"]["condition"] == "service_healthy", name
    assert {k: v["condition"] for k, v in svc["milvus"]["depends_on"].items()} == {
        "etcd": "service_healthy",
        "minio": "service_healthy",
    }


def test_milvus_is_the_official_standalone_server(compose: dict) -> None:
    milvus = services(compose)["milvus"]
    assert re.fullmatch(r"milvusdb/milvus:v2\.[56]\.\d+", milvus["image"])
    assert milvus["command"] == ["milvus", "run", "standalone"]
    env = environment(milvus)
    assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000"
    assert environment(services(compose)["minio"])["MINIO_ROOT_USER"] == env["MINIO_ACCESS_KEY_ID"]


def test_the_appliance_serves_and_the_watcher_ingests(compose: dict) -> None:
    svc = services(compose)
    assert svc["appliance"]["command"] == ["serve", "--host", "0.0.0.0"]
    assert svc["ingest-watch"]["command"] == ["ingest", "--watch"]
    assert "--process" in svc["ingest-watch"]["healthcheck"]["test"]
    # heartbeats carry pids: the watcher must live in the server's process namespace
    assert svc["ingest-watch"]["pid"] == "service:appliance"
    assert any(port.endswith(":8080") for port in svc["appliance"]["ports"])


def test_no_secret_value_is_written_in_the_file(compose: dict) -> None:
    for name, service in services(compose).items():
        for key, value in environment(service).items():
            if _SECRET_NAME.search(key):
                from_elsewhere = _BARE_VARIABLE.match(value) or value.startswith("/run/secrets")
                assert from_elsewhere, f"{name}: {key} must come from .env or a secret file"
        assert "APPLIANCE_PASSPHRASE" not in environment(service), name
    for name, secret in compose["secrets"].items():
        assert set(secret) <= {"file", "external", "name"}, name


def test_the_passphrase_reaches_the_appliance_as_a_docker_secret(compose: dict) -> None:
    assert compose["secrets"]["appliance_passphrase"]["file"].endswith("/passphrase")
    for name in APPLIANCE_SERVICES:
        service = services(compose)[name]
        assert {"source": "appliance_passphrase", "target": "passphrase"} in service["secrets"]
        assert environment(service)["APPLIANCE__SECRETS_DIR"] == "/run/secrets"


def test_volumes_are_declared_and_mounted_where_the_settings_look(compose: dict) -> None:
    declared = set(compose["volumes"])
    for name, service in services(compose).items():
        for source, target, _ in mounts(service):
            if not source.startswith(("/", ".", "$")):
                assert source in declared, f"{name}: volume {source} is not declared"
            assert target.startswith("/"), name
    for name in APPLIANCE_SERVICES:
        service = services(compose)[name]
        by_target = {target: (source, ro) for source, target, ro in mounts(service)}
        env = environment(service)
        assert by_target[env["APPLIANCE_HOME"]] == ("appliance-home", False), name
        assert env["APPLIANCE__INGEST__DROP_DIR"] in by_target, name
        assert service["user"] not in {"0", "root"} and not service["user"].startswith("0:")
    models = {t: ro for _, t, ro in mounts(services(compose)["appliance"])}
    assert models["/srv/models"] is True  # model packages and policies: read-only


# -- the settings in the environment are real settings -------------------------------------------


def setting_value(settings: Any, variable: str) -> Any:
    """The setting an `APPLIANCE__SECTION__KEY` variable sets (fails if there is none)."""
    node = settings
    for part in variable.removeprefix("APPLIANCE__").lower().split("__"):
        assert part in type(node).model_fields, f"{variable}: no setting {part!r}"
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("service_name", APPLIANCE_SERVICES)
def test_compose_environment_maps_to_real_settings(
    compose: dict, service_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(services(compose)[service_name])
    assert env.pop("APPLIANCE_HOME") == HOME
    assert env, "no settings in the environment"
    for key, value in env.items():
        assert key.startswith("APPLIANCE__"), key
        monkeypatch.setenv(key, value)
    settings = load_settings(tmp_path)
    for key, value in env.items():
        assert str(setting_value(settings, key)) == value, key
    assert settings.milvus_uri == "http://milvus:19530"
    assert settings.drop_dir == Path("/srv/drop")


def test_the_deployment_guide_names_real_settings_and_commands(tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    settings = load_settings(tmp_path)
    variables = set(re.findall(r"APPLIANCE__[A-Z_]*[A-Z]", guide))
    assert {
        "APPLIANCE__MILVUS__URI",
        "APPLIANCE__MILVUS__TOKEN",
        "APPLIANCE__SECRETS_DIR",
    } <= variables
    for variable in variables:
        setting_value(settings, variable)
    fenced = re.findall(r"```.*?```", guide, re.S)
    inline = re.findall(r"`[^`\n]+`", re.sub(r"```.*?```", "", guide, flags=re.S))
    code = re.sub(r"(^|\s)#.*", "", "\n".join(fenced + inline))  # commands, not comments
    # `compose run SERVICE ARGS` runs the image's `appliance` entrypoint; `compose exec` does not
    code = re.sub(r"docker compose run(?: -[-\w]+)* appliance ", "appliance ", code)
    code = re.sub(r"docker compose exec(?: -[-\w]+)* appliance ", "", code)
    commands = set(re.findall(r"(?=\bappliance ([a-z]+)(?: ([a-z]+))?)", code))
    assert {("serve", ""), ("init", ""), ("users", "add"), ("model", "install")} <= commands
    for group, sub in commands:
        assert group in cli.commands, f"appliance {group}"
        command = cli.commands[group]
        if isinstance(command, click.Group) and sub:
            assert sub in command.commands, f"appliance {group} {sub}"
