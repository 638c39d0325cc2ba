"""One table of settings: declared once, parsed one way, all in `ladle --help` and the README."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from backends.options import BACKEND_OPTIONS, BackendOptions, backend_options
from backends.settings_table import FALSE, TRUE, ConfigError, Option, parse_bool, parse_value, rows
from handler.cli import build_parser, parse_settings
from handler.config import OPTIONS, SERVER_OPTIONS, Settings, settings_from_env

ROOT = Path(__file__).resolve().parent.parent
# BackendOptions fields a Python caller may pass but no variable sets.
LIBRARY_ONLY = {"device_map"}


def test_every_setting_is_declared_once() -> None:
    assert OPTIONS == SERVER_OPTIONS + BACKEND_OPTIONS
    envs = [o.env for o in OPTIONS]
    fields = [o.field for o in OPTIONS]
    assert len(set(envs)) == len(envs) and len(set(fields)) == len(fields)
    # Every field of Settings (the backend's inherited) has its row, and nothing else does.
    assert set(fields) == {f.name for f in dataclasses.fields(Settings)} - LIBRARY_ONLY
    assert {o.field for o in BACKEND_OPTIONS} == {
        f.name for f in dataclasses.fields(BackendOptions)
    } - LIBRARY_ONLY
    assert all(o.owner is BackendOptions for o in BACKEND_OPTIONS)
    assert issubclass(Settings, BackendOptions)
    with pytest.raises(TypeError, match="no field"):
        rows(BackendOptions, Option("nope", "NOPE", "not a field"))


def test_kinds_and_defaults_come_from_the_fields() -> None:
    by_env = {o.env: o for o in OPTIONS}
    assert [
        by_env[e].kind for e in ("COMPILE", "MAX_CONTEXT", "MAX_MEMORY", "CORS_ORIGINS", "SSE_KEEPALIVE")
    ] == [
        "bool",
        "int",
        "str",
        "list",
        "float",
    ]
    assert (by_env["MAX_BATCH_SIZE"].default, by_env["DEVICE"].default, by_env["COMPILE"].default) == (
        16,
        "auto",
        None,
    )
    assert by_env["LADLE_CGROUP_ROOT"].default == "/sys/fs/cgroup" and not by_env["NO_PLAYGROUND"].flagged


@pytest.mark.parametrize("word", sorted(TRUE | FALSE))
def test_one_truthy_parser(word: str) -> None:
    expected = word in TRUE
    assert parse_bool(f" {word.upper()} ") is expected
    for env in ("TRUST_REMOTE_CODE", "LOG_PROMPTS", "PREFIX_CACHE", "NO_PLAYGROUND"):
        assert getattr(settings_from_env({env: word}), {o.env: o.field for o in OPTIONS}[env]) is expected
    assert backend_options({"LOAD_IN_4BIT": word}).load_in_4bit is expected
    # COMPILE is unset (the device decides) when empty.
    assert backend_options({"COMPILE": word}).compile is (None if word == "" else expected)


def test_bad_values_name_their_variable() -> None:
    assert parse_bool("maybe") is None
    for env, raw in (("COMPILE", "maybe"), ("LOAD_IN_4BIT", "2"), ("NO_PLAYGROUND", "please")):
        with pytest.raises(ConfigError, match=f"{env} must be true or false"):
            settings_from_env({env: raw})
    with pytest.raises(ConfigError, match="MAX_CONTEXT must be >= 2"):
        backend_options({"MAX_CONTEXT": "1"})
    with pytest.raises(ConfigError, match="MAX_CONTEXT must be an integer"):
        settings_from_env({"MAX_CONTEXT": "lots"})
    option = next(o for o in OPTIONS if o.env == "MAX_CONTEXT")
    with pytest.raises(ConfigError, match="--max-context"):
        parse_value(option, "x", option.flag)


def test_backend_options_given_then_env_then_default() -> None:
    env = {"DTYPE": "float16", "MAX_CONTEXT": "300", "MAX_MEMORY": "cpu:1GiB", "MAX_BATCH_SIZE": "4"}
    options = backend_options(env, max_context=64, compile=None)
    assert (options.dtype, options.max_context, options.max_memory, options.max_batch_size) == (
        "float16",
        64,
        "cpu:1GiB",
        4,
    )
    assert options.compile is None and options.load_in_4bit is False
    assert backend_options(env, base=BackendOptions(), max_batch_size=2) == BackendOptions(max_batch_size=2)
    with pytest.raises(TypeError, match="unknown backend option 'max_contxt'"):
        backend_options({}, max_contxt=64)


def test_settings_carry_the_backend_options() -> None:
    settings = settings_from_env(
        {"COMPILE": "1", "MAX_CONTEXT": "512", "API_KEY": "k"}, {"max_batch_size": 3}
    )
    options = BackendOptions.copy_of(settings)
    assert type(options) is BackendOptions
    assert (options.compile, options.max_context, options.max_batch_size) == (True, 512, 3)
    assert parse_settings(["--no-compile", "--max-memory", "0:1GiB"]).compile is False


def test_help_lists_every_setting_with_its_variable_and_default() -> None:
    help_text = " ".join(build_parser().format_help().split())
    for option in OPTIONS:
        assert f"{option.help} (env {option.env}; default:" in help_text, option.env
        assert (option.flag in help_text) is option.flagged, option.flag
    assert "(env COMPILE; default: unset)" in help_text and "(env MAX_BATCH_SIZE; default: 16)" in help_text
    assert "default: /sys/fs/cgroup" in help_text and "OMP_NUM_THREADS" in help_text


def _readme_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    found: dict[str, str] = {}
    for line in section.splitlines():
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) >= 3:
            for name in re.findall(r"`([A-Z0-9_]+)`", cells[0]):
                found[name] = cells[1]
    return found


def _shown(default: object) -> str | None:
    """How the README's default column writes a default (None: in words, not checked)."""
    if default is None or default == ():
        return None
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{default}`"


def test_readme_table_lists_every_setting_with_its_default() -> None:
    table = _readme_rows()
    missing = [o.env for o in OPTIONS if o.env not in table]
    assert not missing, f"README's configuration table lacks {missing}"
    for option in OPTIONS:
        shown = _shown(option.default)
        assert shown is None or shown in table[option.env], (option.env, shown, table[option.env])
    assert not set(table) - {o.env for o in OPTIONS}, "README lists a variable the table does not have"


def test_backends_read_no_environment() -> None:
    allowed = {"backends/runner/loading.py", "backends/options.py"}  # the cache default; the table's reader
    readers = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "backends").rglob("*.py")
        if re.search(r"os\.environ|os\.getenv|environ\.get", path.read_text())
    }
    assert readers <= allowed, readers - allowed


def test_truthy_words_are_written_once() -> None:
    homes = {
        str(path.relative_to(ROOT))
        for folder in ("backends", "handler")
        for path in (ROOT / folder).rglob("*.py")
        if re.search(r"""["']yes["']""", path.read_text())
    }
    assert homes == {"backends/settings_table.py"}
