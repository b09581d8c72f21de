"""Read the Ansible tree in ``deploy/ansible`` without Ansible: roles, tasks, Jinja.

The checks in ``test_ansible.py`` need to know which variables a role's tasks
and templates use and which task calls which module. Ansible answers that only
by running; here YAML is parsed with PyYAML and every templated string with
Jinja's own parser, so the checks also run where only ``jinja2`` is installed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2 import meta, nodes

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "ansible"
ROLES_DIR = ANSIBLE_DIR / "roles"
INVENTORY = ANSIBLE_DIR / "inventory" / "example.yml"

TASK_KEYWORDS = frozenset(
    {
        "action",
        "any_errors_fatal",
        "args",
        "async",
        "become",
        "become_method",
        "become_user",
        "changed_when",
        "check_mode",
        "delay",
        "delegate_facts",
        "delegate_to",
        "diff",
        "environment",
        "failed_when",
        "ignore_errors",
        "ignore_unreachable",
        "listen",
        "local_action",
        "loop",
        "loop_control",
        "name",
        "no_log",
        "notify",
        "poll",
        "register",
        "retries",
        "run_once",
        "tags",
        "throttle",
        "timeout",
        "until",
        "vars",
        "when",
    }
)
"""Keys of a task that are not its module."""

BLOCK_KEYS = ("block", "rescue", "always")

EXPRESSION_KEYS = frozenset({"when", "changed_when", "failed_when", "until", "that"})
"""Keys whose strings are bare Jinja expressions, without ``{{ }}``."""

MAGIC_VARIABLES = frozenset(
    {
        "ansible_managed",
        "groups",
        "hostvars",
        "inventory_hostname",
        "item",
        "lookup",
        "omit",
        "play_hosts",
        "playbook_dir",
        "q",
        "query",
        "range",
        "role_name",
        "role_path",
    }
)
"""Variables and globals that Ansible itself defines (``ansible_*`` too)."""

FQCN = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+\.[a-z0-9_]+$")

SECRET_NAME = re.compile(r"(password|secret|token|key_content|database_url|redis_url)$")
"""Variables whose value is, or holds, a credential."""


def is_magic(name: str) -> bool:
    """Whether Ansible defines ``name`` for every play."""
    return name in MAGIC_VARIABLES or name.startswith("ansible_")


def load_yaml(path: Path) -> Any:
    """One YAML document, as PyYAML reads it."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# Jinja


def template_names(text: str) -> set[str]:
    """Variables a Jinja template reads that it does not define itself."""
    environment = jinja2.Environment()  # noqa: S701 - parsed, never rendered
    tree = environment.parse(text)

    # Ansible's filters and tests are unknown to plain Jinja; stand-ins let
    # the analysis compile the tree without rendering it.
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        registry: dict[str, Any] = (
            environment.filters if isinstance(node, nodes.Filter) else environment.tests
        )
        registry.setdefault(node.name, _stand_in)
    return set(meta.find_undeclared_variables(tree))


def output_names(text: str) -> set[str]:
    """Variables whose value a template writes out (inside ``{{ }}``)."""
    found: set[str] = set()
    for expression in re.findall(r"\{\{(.*?)\}\}", text, flags=re.DOTALL):
        found |= template_names("{{" + expression + "}}")
    return found


def value_names(value: Any, *, expression: bool = False) -> set[str]:
    """Variables read by a YAML value: templated strings, nested lists and maps."""
    if isinstance(value, str):
        if expression:
            return template_names("{{ " + value + " }}")
        if "{{" in value or "{%" in value:
            return template_names(value)
        return set()
    if isinstance(value, list):
        return set().union(*(value_names(v, expression=expression) for v in value))
    if isinstance(value, dict):
        found: set[str] = set()
        for key, item in value.items():
            found |= value_names(item, expression=expression or key in EXPRESSION_KEYS)
        return found
    return set()


def _stand_in(*_args: Any, **_kwargs: Any) -> None:
    return None


# Tasks


def walk_tasks(tasks: list[dict[str, Any]] | None) -> Iterator[dict[str, Any]]:
    """Every task of a task list, including those inside blocks."""
    for task in tasks or []:
        yield task
        for key in BLOCK_KEYS:
            if key in task:
                yield from walk_tasks(task[key])


def module_of(task: dict[str, Any]) -> str | None:
    """The module a task calls (``None`` for a block)."""
    if any(key in task for key in BLOCK_KEYS):
        return None
    candidates = [key for key in task if key not in TASK_KEYWORDS]
    if len(candidates) != 1:
        raise AssertionError(
            f"task {task.get('name')!r} has {len(candidates)} module keys "
            f"({candidates}); expected exactly one"
        )
    return candidates[0]


def task_names(task: dict[str, Any]) -> set[str]:
    """Variables a task reads; a block's own keys only, not its children's."""
    return value_names({k: v for k, v in task.items() if k not in BLOCK_KEYS})


def task_output_names(task: dict[str, Any], templates_dir: Path) -> set[str]:
    """Variables whose values a task passes on: module arguments and templates."""
    module = module_of(task)
    if module is None:
        return set()
    arguments = task[module]

    # An assertion reports which condition failed, never the values in it.
    if isinstance(arguments, dict):
        arguments = {k: v for k, v in arguments.items() if k != "that"}
    found = value_names({"args": arguments}) | value_names(task.get("environment"))
    if module.endswith(".template") and isinstance(arguments, dict):
        found |= output_names((templates_dir / arguments["src"]).read_text())
    for looked_up in re.findall(r"'([\w.-]+\.j2)'", str(arguments)):
        found |= output_names((templates_dir / looked_up).read_text())
    return found


# Roles


@dataclass
class Role:
    """What one role defines, reads and runs."""

    path: Path
    defaults: dict[str, Any] = field(default_factory=dict)
    default_lines: list[str] = field(default_factory=list)
    dependencies: list[dict[str, Any]] = field(default_factory=list)
    task_files: dict[Path, list[dict[str, Any]]] = field(default_factory=dict)
    templates: dict[Path, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The role's folder name, which is also its variables' prefix."""
        return self.path.name

    @property
    def prefix(self) -> str:
        """What every public variable of the role starts with."""
        return self.name + "_"

    def tasks(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Every task and handler, with the file it is in."""
        for path, tasks in self.task_files.items():
            for task in walk_tasks(tasks):
                yield path, task

    def registered(self) -> set[str]:
        """Variables the role sets at run time (register and set_fact)."""
        found = set()
        for _path, task in self.tasks():
            if "register" in task:
                found.add(task["register"])
            for key in ("ansible.builtin.set_fact", "set_fact"):
                if isinstance(task.get(key), dict):
                    found |= set(task[key])
        return found

    def used_by_tasks_and_templates(self) -> set[str]:
        """Variables read by tasks, handlers and templates."""
        used: set[str] = set()
        for _path, task in self.tasks():
            used |= task_names(task)
            loop_var = task.get("loop_control", {}).get("loop_var")
            used.discard(loop_var)
        for text in self.templates.values():
            used |= template_names(text)
        return used

    def used_by_defaults(self) -> set[str]:
        """Variables read by the values of ``defaults/main.yml``."""
        return value_names(self.defaults)

    def used_by_dependencies(self) -> set[str]:
        """Variables read by the parameters this role gives its dependencies."""
        return value_names(self.dependencies)

    def undocumented_defaults(self) -> list[str]:
        """Defaults without a comment line right above them."""
        missing = []
        for number, line in enumerate(self.default_lines):
            match = re.match(r"^([a-z0-9_]+):", line)
            if match and (
                number == 0 or not self.default_lines[number - 1].startswith("#")
            ):
                missing.append(match.group(1))
        return missing


def load_role(path: Path) -> Role:
    """Read a role's defaults, meta dependencies, task files and templates."""
    role = Role(path)
    defaults = path / "defaults" / "main.yml"
    if defaults.exists():
        role.defaults = load_yaml(defaults) or {}
        role.default_lines = defaults.read_text(encoding="utf-8").splitlines()
    meta_file = path / "meta" / "main.yml"
    if meta_file.exists():
        role.dependencies = (load_yaml(meta_file) or {}).get("dependencies") or []
    for folder in ("tasks", "handlers"):
        for task_file in sorted((path / folder).glob("*.yml")):
            role.task_files[task_file] = load_yaml(task_file) or []
    for template in sorted((path / "templates").rglob("*.j2")):
        role.templates[template] = template.read_text(encoding="utf-8")
    return role


def roles() -> list[Role]:
    """Every role of the tree, by name."""
    return [load_role(path) for path in sorted(ROLES_DIR.iterdir()) if path.is_dir()]


def dependency_names(role: Role) -> list[str]:
    """Names of the roles this role depends on."""
    names = []
    for dependency in role.dependencies:
        names.append(dependency if isinstance(dependency, str) else dependency["role"])
    return names


def playbooks() -> list[Path]:
    """The playbooks at the top of the tree."""
    return sorted(ANSIBLE_DIR.glob("*.yml"))
