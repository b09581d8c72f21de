"""The Ansible roles and playbooks of ``deploy/ansible``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip(
    "jinja2", reason="jinja2 comes with ansible-core: pip install 'farmeye[test]'"
)

from tests.deploy import ansible_tree  # noqa: E402 - after the skip above
from tests.deploy.ansible_tree import ANSIBLE_DIR, INVENTORY, Role  # noqa: E402

ROLES = {role.name: role for role in ansible_tree.roles()}
PLAYBOOKS = ansible_tree.playbooks()

RENDER_HOSTS = {
    "farmeye_postgresql": "db-1",
    "farmeye_redis": "db-1",
    "farmeye_hub": "hub-1",
    "farmeye_worker": "gpu-1",
    "farmeye_agent": "coop-north-1",
}
"""Example host each role's templates are rendered for (farmeye_common comes along)."""

FACT_ROLES = frozenset({"farmeye_postgresql", "farmeye_redis"})
"""Roles whose defaults read network facts (the addresses to listen on)."""

COMMAND_TIMEOUT_S = 300


def tool(name: str) -> str:
    """The path of an Ansible command next to this Python, or skip the test."""
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}")
    found = found or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed; pip install 'farmeye[test]' has it")
    return found


def ansible_environment(home: Path) -> dict[str, str]:
    """Environment that keeps Ansible's caches and temporary files under ``home``."""
    home.mkdir(exist_ok=True)
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / "cache"),
    }


@pytest.fixture
def ansible_env(tmp_path: Path) -> dict[str, str]:
    """An Ansible environment of this test's own."""
    return ansible_environment(tmp_path / "ansible-home")


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command in the Ansible folder; its output is in the assertion message."""
    return subprocess.run(
        argv,
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def report(result: subprocess.CompletedProcess[str]) -> str:
    """The end of a command's output, for an assertion message."""
    return f"exit {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"


# Playbooks


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda path: path.name)
def test_playbook_passes_syntax_check(
    playbook: Path, ansible_env: dict[str, str]
) -> None:
    """Each playbook passes --syntax-check with the example inventory."""
    command = tool("ansible-playbook")
    result = run(
        [command, "--syntax-check", "-i", str(INVENTORY), playbook.name], ansible_env
    )
    assert result.returncode == 0, report(result)


def test_site_imports_every_other_playbook() -> None:
    """site.yml deploys everything: it imports every other playbook."""
    site = ansible_tree.load_yaml(ANSIBLE_DIR / "site.yml")
    imported = {play["ansible.builtin.import_playbook"] for play in site}
    others = {path.name for path in PLAYBOOKS} - {"site.yml"}
    assert imported == others


@pytest.mark.parametrize("playbook", ["workers.yml", "hubs.yml"])
def test_servers_roll_in_batches_and_stop_on_failure(playbook: str) -> None:
    """Workers and hubs restart one batch at a time and stop at the first failure."""
    (play,) = ansible_tree.load_yaml(ANSIBLE_DIR / playbook)
    assert "serial" in play
    assert play["max_fail_percentage"] == 0


def test_restarted_hub_must_answer_before_the_roll_goes_on() -> None:
    """The hub's restart handler hands over to a health check of that hub."""
    handlers = ansible_tree.load_yaml(
        ANSIBLE_DIR / "roles" / "farmeye_hub" / "handlers" / "main.yml"
    )
    restart, wait = handlers
    assert restart["notify"] == wait["name"]
    assert wait["ansible.builtin.uri"]["url"].endswith("/healthz")
    assert "farmeye_hub_start_timeout_s" in wait["retries"]


# Role variables


@pytest.mark.parametrize("role", ROLES.values(), ids=lambda role: role.name)
def test_role_defaults_are_prefixed_and_documented(role: Role) -> None:
    """Every default starts with the role's name and has a comment above it."""
    assert role.defaults, f"{role.name} has no defaults/main.yml"
    badly_named = [
        name
        for name in role.defaults
        if not name.startswith(role.prefix) or "__" in name
    ]
    assert not badly_named, f"defaults not prefixed {role.prefix!r}: {badly_named}"
    assert not role.undocumented_defaults(), "defaults without a comment above them"


@pytest.mark.parametrize("role", ROLES.values(), ids=lambda role: role.name)
def test_role_reads_only_its_own_variables(role: Role) -> None:
    """Tasks and templates read only the role's defaults, its registers and facts."""
    known = set(role.defaults) | role.registered()
    foreign = {
        name
        for name in role.used_by_tasks_and_templates() | role.used_by_dependencies()
        if name not in known and not ansible_tree.is_magic(name)
    }
    assert not foreign, f"{role.name} reads variables missing from its defaults"


@pytest.mark.parametrize("role", ROLES.values(), ids=lambda role: role.name)
def test_role_defaults_refer_only_to_dependencies(role: Role) -> None:
    """A default may derive from the role's own defaults or its dependencies' ones."""
    known = set(role.defaults)
    for dependency in ansible_tree.dependency_names(role):
        known |= set(ROLES[dependency].defaults)
    foreign = {
        name
        for name in role.used_by_defaults()
        if name not in known and not ansible_tree.is_magic(name)
    }
    assert not foreign, f"{role.name} defaults refer to unknown variables"


@pytest.mark.parametrize("role", ROLES.values(), ids=lambda role: role.name)
def test_role_defaults_are_all_used(role: Role) -> None:
    """No default is dead: each is read by a task, template, default or dependency."""
    used = (
        role.used_by_tasks_and_templates()
        | role.used_by_defaults()
        | role.used_by_dependencies()
    )
    assert set(role.defaults) <= used, set(role.defaults) - used


@pytest.mark.parametrize("role", ROLES.values(), ids=lambda role: role.name)
def test_registered_variables_are_private_to_the_role(role: Role) -> None:
    """Registered variables are named ROLE__NAME, apart from the public ROLE_NAME."""
    stray = {
        name for name in role.registered() if not name.startswith(role.name + "__")
    }
    assert not stray


# Tasks


def all_tasks() -> list[tuple[str, dict[str, Any]]]:
    """Every task of every role and playbook, with where it is."""
    found = []
    for role in ROLES.values():
        for path, task in role.tasks():
            found.append((str(path.relative_to(ANSIBLE_DIR)), task))
    for playbook in PLAYBOOKS:
        for play in ansible_tree.load_yaml(playbook):
            if "hosts" not in play:
                found.append((playbook.name, play))
                continue
            for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                for task in ansible_tree.walk_tasks(play.get(key)):
                    found.append((playbook.name, task))
    return found


def test_every_task_has_a_name_and_a_fully_qualified_module() -> None:
    """Each task and handler is named and calls its module by its full name."""
    problems = []
    for where, task in all_tasks():
        if not task.get("name"):
            problems.append(f"{where}: a task without a name: {task}")
        module = ansible_tree.module_of(task)
        if module is not None and not ansible_tree.FQCN.match(module):
            problems.append(f"{where}: {task.get('name')!r} calls {module!r}")
    assert not problems, "\n".join(problems)


def test_task_names_are_sentences() -> None:
    """Task names start with a capital letter and do not end with a full stop."""
    odd = [
        f"{where}: {task['name']!r}"
        for where, task in all_tasks()
        if not task["name"][0].isupper() or task["name"].endswith(".")
    ]
    assert not odd, "\n".join(odd)


def test_services_restart_only_in_handlers() -> None:
    """Restarts and reloads happen in handlers, so each runs once and only on change."""
    offending = []
    for role in ROLES.values():
        for path, task in role.tasks():
            if path.parent.name != "tasks":
                continue
            arguments = task.get(ansible_tree.module_of(task) or "", {})
            if isinstance(arguments, dict) and arguments.get("state") in (
                "restarted",
                "reloaded",
            ):
                offending.append(f"{path.name}: {task['name']}")
    assert not offending


def test_tasks_handling_secrets_hide_their_output() -> None:
    """A task that passes a password, secret, token or key on sets no_log."""
    leaking = []
    for role in ROLES.values():
        templates_dir = role.path / "templates"
        for path, task in role.tasks():
            secrets = {
                name
                for name in ansible_tree.task_output_names(task, templates_dir)
                if ansible_tree.SECRET_NAME.search(name)
            }
            if secrets and task.get("no_log") in (None, False):
                leaking.append(f"{path.name}: {task['name']!r} uses {sorted(secrets)}")
    assert not leaking, "\n".join(leaking)


def test_example_inventory_keeps_secrets_in_vault_files() -> None:
    """Secrets are vault_* variables in vault.yml files; elsewhere only references."""
    problems = []
    for path in sorted((INVENTORY.parent).rglob("*.yml")):
        data = ansible_tree.load_yaml(path) or {}
        if path == INVENTORY:
            continue
        for name, value in data.items():
            in_vault_file = path.name == "vault.yml"
            if in_vault_file and not name.startswith("vault_"):
                problems.append(f"{path.name}: {name} is not a vault_ variable")
            if (
                not in_vault_file
                and ansible_tree.SECRET_NAME.search(name)
                and isinstance(value, str)
                and value
                and "{{" not in value
            ):
                problems.append(f"{path}: {name} holds a literal secret")
    assert not problems, "\n".join(problems)


# Rendering


def write_render_roles(roles_dir: Path) -> None:
    """A stand-in for each role: its real defaults, meta and templates, and one
    task that renders every template and reports the texts.

    Rendering and reporting happen on the controller, so the run is quick.
    """
    for role in ROLES.values():
        target = roles_dir / role.name
        (target / "tasks").mkdir(parents=True)
        for folder in ("defaults", "meta", "templates"):
            if (role.path / folder).is_dir():
                (target / folder).symlink_to(role.path / folder)
        lookups = ", ".join(
            f"'{name}': lookup('ansible.builtin.template', '{name}.j2')"
            for name in _template_names(role)
        )
        task = {
            "name": "Render every template of the role",
            "ansible.builtin.debug": {
                "msg": {"role": "{{ role_name }}", "texts": "{{ {" + lookups + "} }}"}
            },
        }
        (target / "tasks" / "main.yml").write_text(_yaml_dump([task]))


def _template_names(role: Role) -> list[str]:
    """Template paths relative to the role's templates folder, without ``.j2``."""
    folder = role.path / "templates"
    return [str(path.relative_to(folder))[: -len(".j2")] for path in role.templates]


def write_render_playbook(path: Path) -> None:
    """One play per example host, with the roles that host gets."""
    hosts: dict[str, list[str]] = {}
    for role, host in RENDER_HOSTS.items():
        hosts.setdefault(host, []).append(role)
    plays = [
        {
            "name": f"Render the templates of {host}",
            "hosts": host,
            "gather_facts": any(role in FACT_ROLES for role in roles),
            "gather_subset": ["network"],
            "roles": roles,
        }
        for host, roles in hosts.items()
    ]
    path.write_text(_yaml_dump(plays))


def _yaml_dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)


Rendered = dict[tuple[str, str], dict[str, str]]
"""(host, role) -> template file name -> rendered text."""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """Every template rendered with the example inventory, by host and role."""
    command = tool("ansible-playbook")
    work = tmp_path_factory.mktemp("render")
    write_render_roles(work / "roles")
    write_render_playbook(work / "render.yml")
    env = {
        **ansible_environment(work / "home"),
        "ANSIBLE_ROLES_PATH": str(work / "roles"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.oneline",
    }
    result = run(
        [
            command,
            "-i",
            str(INVENTORY),
            str(work / "render.yml"),
            "-e",
            "ansible_connection=local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
        ],
        env,
    )
    assert result.returncode == 0, report(result)
    return collect_rendered(result.stdout)


def collect_rendered(output: str) -> Rendered:
    """The texts each render task reported, from the oneline callback's output."""
    texts: Rendered = {}
    for line in output.splitlines():
        host, separator, outcome = line.partition(" | SUCCESS => ")
        if not separator:
            continue
        message = json.loads(outcome).get("msg")
        if isinstance(message, dict) and "role" in message:
            texts[(host, message["role"])] = message["texts"]
    return texts


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FARMEYE_* variable of this shell leaks into the settings read back."""
    for name in list(os.environ):
        if name.startswith("FARMEYE_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_environment")
def test_hub_config_renders_to_valid_settings(
    rendered: Rendered, tmp_path: Path
) -> None:
    """The hub's rendered config is accepted by farmeye.config, with TLS on."""
    from farmeye.config import load_settings

    texts = rendered[("hub-1", "farmeye_hub")]
    config_file = tmp_path / "hub.yaml"
    config_file.write_text(texts["hub.yaml"])
    settings = load_settings(config_file)
    assert settings.database_url is not None
    assert "@10.20.0.10:5432/farmeye" in settings.database_url
    assert settings.redis_url is not None
    assert settings.redis_url.endswith("@10.20.0.10:6379/0")
    assert settings.tls_enabled
    unit = texts["farmeye-hub.service"]
    assert "ExecStart=/opt/farmeye/venv/bin/farmeye hub --config" in unit
    assert "User=farmeye" in unit


@pytest.mark.usefixtures("clean_environment")
def test_worker_config_and_unit_render_for_a_gpu_machine(
    rendered: Rendered, tmp_path: Path
) -> None:
    """The GPU worker gets valid settings and a unit with its device and processes."""
    from farmeye.config import load_settings

    texts = rendered[("gpu-1", "farmeye_worker")]
    config_file = tmp_path / "worker.yaml"
    config_file.write_text(texts["worker.yaml"])
    settings = load_settings(config_file)
    assert settings.database_url and settings.redis_url
    unit = texts["farmeye-worker.service"]
    for expected in (
        "--device gpu",
        "--concurrency 2",
        "--metrics-port 9808",
        "KillMode=mixed",
        "TimeoutStopSec=330",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert expected in unit


def test_agent_config_renders_to_a_valid_agent_config(
    rendered: Rendered, tmp_path: Path
) -> None:
    """The camera's rendered config is accepted by edge_agent.config."""
    from edge_agent.config import load_config

    texts = rendered[("coop-north-1", "farmeye_agent")]
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(texts["agent.yaml"])
    config = load_config(config_file)
    assert config.device_id == "dev_3f9a0c1d2e4b5a6978ab"
    assert config.secret is None
    assert str(config.secret_file) == "/etc/farmeye/agent.secret"
    assert config.camera.type == "picamera2"
    assert config.hub.tls
    assert config.spool_path == Path("/var/lib/farmeye-agent/spool")
    assert config.spool.quota_bytes == 1_000_000_000
    unit = texts["farmeye-agent.service"]
    assert "Type=notify" in unit
    assert "StateDirectory=farmeye-agent" in unit


@pytest.mark.parametrize(
    ("host", "requirement"),
    [
        ("hub-1", "farmeye[hub]==0.1.0"),
        ("gpu-1", "farmeye[worker]==0.1.0"),
        ("coop-north-1", "farmeye[agent]==0.1.0"),
    ],
)
def test_each_host_installs_its_extra(
    rendered: Rendered, host: str, requirement: str
) -> None:
    """farmeye_common installs the extra of the role that depends on it."""
    texts = rendered[(host, "farmeye_common")]
    assert requirement in texts["requirements.txt"].splitlines()


def test_redis_is_a_broker_that_never_evicts(rendered: Rendered) -> None:
    """Redis refuses writes when full instead of dropping queued tasks."""
    lines = rendered[("db-1", "farmeye_redis")]["farmeye.conf"]
    assert "maxmemory-policy noeviction" in lines.splitlines()
    assert "requirepass CHANGE_ME-redis-password" in lines.splitlines()


def test_postgresql_lets_in_the_hubs_and_workers_only(rendered: Rendered) -> None:
    """pg_hba.conf gets one hostssl line per hub and worker of the inventory."""
    text = rendered[("db-1", "farmeye_postgresql")]["pg_hba.conf"]
    lines = [line.split() for line in text.splitlines() if line.strip()]
    assert lines == [
        ["hostssl", "farmeye", "farmeye", f"{address}/32", "scram-sha-256"]
        for address in ("10.20.0.11", "10.20.0.21", "10.20.0.22")
    ]


# Linters


def test_tree_passes_yamllint(ansible_env: dict[str, str]) -> None:
    """Every YAML file passes yamllint at 120 columns."""
    command = tool("yamllint")
    result = run([command, "--strict", "-c", ".yamllint", "."], ansible_env)
    assert result.returncode == 0, report(result)


def test_tree_passes_ansible_lint(ansible_env: dict[str, str]) -> None:
    """ansible-lint's production profile passes on the whole tree."""
    command = tool("ansible-lint")
    result = run(
        [command, "--offline", "--profile", "production", "--nocolor", "."],
        ansible_env,
    )
    assert result.returncode == 0, report(result)
