"""docker-compose.yml, checked without a Docker engine: parsed as Compose parses it (YAML with merge
keys), then held to what the stack needs. Whether the images build and the containers start is not
shown here; what each service runs, what it waits for, how its health is told and where the web
port is published, is."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
import yaml
from django.core.management import get_commands

from kahn_site.celery import app as kahn_celery
from tests.conftest import PROJECT
from tests.tenants.test_settings import CLOUD_ENV

COMPOSE = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
LONG_RUNNING = ("postgres", "redis", "web", "web-oss", "worker", "beat")


def command_of(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return shlex.split(command) if isinstance(command, str) else command


def test_the_stack_has_its_services():
    assert set(SERVICES) == {"postgres", "redis", "migrate", "web", "web-oss", "worker", "beat"}


@pytest.mark.parametrize("service", LONG_RUNNING)
def test_every_long_running_service_has_a_health_check_and_restarts(service):
    healthcheck = SERVICES[service]["healthcheck"]
    assert healthcheck["test"][0] in ("CMD", "CMD-SHELL") and len(healthcheck["test"]) > 1
    assert SERVICES[service]["restart"] == "unless-stopped"


@pytest.mark.parametrize("service", ["web", "web-oss"])
def test_web_serves_cloud_mode_and_its_health_check_is_python_that_compiles(service):
    assert command_of(service)[:5] == ["python", "manage.py", "serve", "--mode", "cloud"]
    assert "serve" in get_commands()
    _cmd, python, flag, code = SERVICES[service]["healthcheck"]["test"]
    assert (python, flag) == ("python", "-c")
    compile(code, "healthcheck", "exec")


def test_the_web_port_is_on_loopback_only_in_the_oss_profile():
    assert SERVICES["web-oss"]["profiles"] == ["oss"]
    assert SERVICES["web-oss"]["ports"] == ["127.0.0.1:8080:8080"]
    assert SERVICES["web"]["profiles"] == ["cloud"]
    assert SERVICES["web"]["ports"] == ["8080:8080"]
    for service in SERVICES:
        if service not in ("web", "web-oss"):
            assert "ports" not in SERVICES[service], f"{service} publishes a port"


def test_worker_and_beat_run_this_celery_app():
    assert command_of("worker")[:4] == ["celery", "-A", "kahn_site", "worker"]
    assert command_of("beat")[:4] == ["celery", "-A", "kahn_site", "beat"]
    assert kahn_celery.main == "kahn_site"


def test_migrations_run_first_and_the_app_waits_for_what_it_needs():
    assert command_of("migrate") == ["python", "manage.py", "migrate", "--no-input"]
    assert SERVICES["migrate"]["restart"] == "no"
    for service in ("web", "web-oss", "worker", "beat"):
        assert SERVICES[service]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }
    for service in SERVICES.values():
        for needed, how in service.get("depends_on", {}).items():
            assert needed in SERVICES
            if how["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[needed]


@pytest.mark.parametrize("service", ["migrate", "web", "web-oss", "worker", "beat"])
def test_every_app_container_gets_every_setting_cloud_mode_requires(service):
    environment = SERVICES[service]["environment"]
    assert set(CLOUD_ENV) <= set(environment)
    assert environment["KAHN_MODE"] == "cloud"
    assert environment["REDIS_URL"] == "redis://redis:6379/0"
    # The service and the migrations run as the two roles the init script makes.
    assert environment["DATABASE_URL"].startswith("postgres://kahn_service:")
    assert environment["DATABASE_OWNER_URL"].startswith("postgres://kahn_owner:")
    # Secrets are never written here: each comes from .env, and Compose refuses to start without it.
    for name in ("DJANGO_SECRET_KEY", "OIDC_RP_CLIENT_SECRET"):
        assert re.fullmatch(r"\$\{" + name + r":\?[^}]+\}", environment[name])


def test_the_database_init_script_makes_the_two_roles_of_cloud_mode():
    mount = "./deploy/postgres-init:/docker-entrypoint-initdb.d:ro"
    assert mount in SERVICES["postgres"]["volumes"]
    path = PROJECT / "deploy" / "postgres-init" / "10-kahn-roles.sh"
    assert subprocess.run(["sh", "-n", str(path)], capture_output=True).returncode == 0
    script = path.read_text()
    assert "CREATE ROLE kahn_service LOGIN PASSWORD :'service_password' NOSUPERUSER NOBYPASSRLS" in script
    assert "CREATE DATABASE kahn OWNER kahn_owner" in script


def test_the_image_serves_cloud_mode_as_a_user_without_root():
    dockerfile = (PROJECT / "Dockerfile").read_text()
    assert "\nUSER kahn\n" in dockerfile
    assert 'CMD ["python", "manage.py", "serve", "--mode", "cloud"' in dockerfile
