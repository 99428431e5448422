"""supervise.config: defaults < INI files < SUPERVISE_* environment < flags, and one-line errors.

Every test passes an explicit `environ` to `config.load`; none reads or changes os.environ.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from supervise import config
from supervise.cgroup import available_cpus
from supervise.config import Config, ConfigError

# What an operator's nova.conf looks like: hundreds of [DEFAULT] options that belong to nova,
# values with the characters configparser would otherwise interpolate, continuation lines.
NOVA_DEFAULTS = "\n".join(
    [
        "[DEFAULT]",
        "transport_url = rabbit://nova:secret@controller:5672/",
        "my_ip = 10.0.0.11",
        "debug = true",
        "log_dir = /var/log/nova",
        "state_path = /var/lib/nova",
        "instances_path = $state_path/instances",
        "enabled_apis = osapi_compute,metadata",
        "osapi_compute_workers = 4",
        "cpu_allocation_ratio = 16.0",
        "logging_context_format_string = %(asctime)s.%(msecs)03d %(process)d %(levelname)s "
        "%(name)s [%(request_id)s %(user_identity)s] %(instance)s%(message)s",
        "default_log_levels = amqp=WARN,",
        "    boto=WARN,",
        "    sqlalchemy=WARN",
        *(f"nova_option_{i} = value {i}" for i in range(300)),
        "",
        "[database]",
        "connection = mysql+pymysql://nova:secret@controller/nova",
        "",
        "[api]",
        "auth_strategy = keystone",
        "",
    ]
)


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def assert_one_line(error: pytest.ExceptionInfo[ConfigError], *fragments: str) -> str:
    message = str(error.value)
    assert message.strip(), "the message is empty"
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    return message


# ----- defaults and precedence ------------------------------------------------------------


def test_defaults_with_no_sources() -> None:
    conf = config.load({}, [], {})
    assert conf.workers == available_cpus()
    assert conf.graceful_shutdown_timeout == 60.0
    assert conf.reload_method == "rolling"
    assert conf.reload_batch == 1
    assert conf.preload is False
    assert conf.log_level == "INFO"
    assert conf.log_file is None
    assert conf.host
    assert conf.config_file == ()


def test_available_cpus_is_within_the_affinity_mask() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_later_files_override_earlier_ones_option_by_option(tmp_path: Path) -> None:
    first = write(
        tmp_path,
        "first.conf",
        "[supervise]\nworkers = 2\nreload_batch = 2\nlog_level = debug\n",
    )
    second = write(tmp_path, "second.conf", "[supervise]\nworkers = 3\n")
    conf = config.load({}, [first, second], {})
    assert conf.workers == 3  # the later file wins
    assert conf.reload_batch == 2  # what only the earlier file sets survives
    assert conf.log_level == "DEBUG"
    assert conf.config_file == (first, second)

    assert config.load({}, [second, first], {}).workers == 2


def test_environment_overrides_files(tmp_path: Path) -> None:
    path = write(tmp_path, "a.conf", "[supervise]\nworkers = 2\nreload_batch = 2\n")
    conf = config.load({}, [path], {"SUPERVISE_WORKERS": "4"})
    assert conf.workers == 4
    assert conf.reload_batch == 2


def test_flags_override_environment_and_files(tmp_path: Path) -> None:
    path = write(tmp_path, "a.conf", "[supervise]\nworkers = 2\nlog_level = ERROR\n")
    environ = {"SUPERVISE_WORKERS": "4", "SUPERVISE_LOG_LEVEL": "WARNING"}
    conf = config.load({"workers": 5}, [path], environ)
    assert conf.workers == 5
    assert conf.log_level == "WARNING"  # not given as a flag: the environment still wins


def test_full_precedence_chain(tmp_path: Path) -> None:
    first = write(tmp_path, "1.conf", "[supervise]\nreload_batch = 2\nmax_restarts = 2\n")
    second = write(
        tmp_path, "2.conf", "[supervise]\nreload_batch = 3\nmax_restarts = 3\nhealthy_uptime = 3\n"
    )
    environ = {"SUPERVISE_MAX_RESTARTS": "4", "SUPERVISE_HEALTHY_UPTIME": "4"}
    conf = config.load({"healthy_uptime": 5.0}, [first, second], environ)
    assert (conf.reload_batch, conf.max_restarts, conf.healthy_uptime) == (3, 4, 5.0)


def test_supervise_section_overrides_default_section_of_the_same_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.conf",
        "[DEFAULT]\ngraceful_shutdown_timeout = 5\n[supervise]\ngraceful_shutdown_timeout = 7\n",
    )
    assert config.load({}, [path], {}).graceful_shutdown_timeout == 7.0


def test_values_parse_as_documented(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.conf",
        "[supervise]\n"
        "preload = yes\n"
        "log_level = debug\n"
        "reload_method = mutate\n"
        "graceful_shutdown_timeout = 2.5\n"
        "log_file = /var/log/supervise.log\n"
        "host = compute-1\n",
    )
    conf = config.load({}, [path], {})
    assert conf.preload is True
    assert conf.log_level == "DEBUG"
    assert conf.reload_method == "mutate"
    assert conf.graceful_shutdown_timeout == 2.5
    assert conf.log_file == "/var/log/supervise.log"
    assert conf.host == "compute-1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("On", True), ("0", False), ("no", False), ("OFF", False)],
)
def test_boolean_spellings(text: str, expected: bool) -> None:
    assert config.load({}, [], {"SUPERVISE_PRELOAD": text}).preload is expected


# ----- nova.conf: [DEFAULT] and other sections --------------------------------------------


def test_unknown_default_options_are_ignored_known_ones_parsed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "nova.conf",
        NOVA_DEFAULTS.replace("[DEFAULT]\n", "[DEFAULT]\ngraceful_shutdown_timeout = 5\n", 1),
    )
    conf = config.load({}, [path], {})
    assert conf.graceful_shutdown_timeout == 5.0
    assert isinstance(conf.graceful_shutdown_timeout, float)


def test_host_from_default_section(tmp_path: Path) -> None:
    path = write(tmp_path, "nova.conf", NOVA_DEFAULTS.replace("my_ip", "host = compute-7\nmy_ip"))
    assert config.load({}, [path], {}).host == "compute-7"


def test_supervise_option_names_in_other_sections_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "nova.conf", NOVA_DEFAULTS + "[wsgi]\nworkers = 0\nlog_level = LOUD\n")
    assert config.load({}, [path], {}).workers == available_cpus()


def test_unknown_default_options_do_not_leak_into_the_supervise_section(tmp_path: Path) -> None:
    """BUG: configparser's options(section) includes every [DEFAULT] key, so a nova.conf that
    also has a [supervise] section is rejected for nova's own options ('transport_url')."""
    path = write(tmp_path, "nova.conf", NOVA_DEFAULTS + "[supervise]\nworkers = 3\n")
    conf = config.load({}, [path], {})
    assert conf.workers == 3


def test_repeated_keys_in_a_section_supervise_does_not_read_are_accepted(tmp_path: Path) -> None:
    """BUG: oslo.config reads a key given several times as a multi-valued option (nova's
    [pci] alias, neutron's [service_providers] service_provider), so such a nova.conf is valid,
    but configparser's strict mode rejects it with DuplicateOptionError."""
    path = write(
        tmp_path,
        "nova.conf",
        NOVA_DEFAULTS
        + "[pci]\n"
        + 'alias = { "vendor_id": "8086", "product_id": "154d", "name": "a1" }\n'
        + 'alias = { "vendor_id": "8086", "product_id": "1520", "name": "a2" }\n',
    )
    assert config.load({}, [path], {}).workers == available_cpus()


def test_unknown_option_in_supervise_section_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "a.conf", "[supervise]\nworkers = 2\nwrokers = 3\n")
    with pytest.raises(ConfigError) as error:
        config.load({}, [path], {})
    assert_one_line(error, path, "wrokers")


# ----- environment ------------------------------------------------------------------------


def test_unknown_supervise_variable_is_an_error() -> None:
    with pytest.raises(ConfigError) as error:
        config.load({}, [], {"SUPERVISE_FOO": "1"})
    assert_one_line(error, "SUPERVISE_FOO")


def test_other_variables_are_ignored() -> None:
    environ = {"PATH": "/usr/bin", "HOME": "/root", "NOT_SUPERVISE_FOO": "1", "WORKERS": "0"}
    assert config.load({}, [], environ).workers == available_cpus()


def test_config_file_variable_is_used_without_flag_files(tmp_path: Path) -> None:
    first = write(tmp_path, "1.conf", "[supervise]\nworkers = 2\nreload_batch = 2\n")
    second = write(tmp_path, "2.conf", "[supervise]\nworkers = 3\n")
    conf = config.load({}, [], {"SUPERVISE_CONFIG_FILE": f"{first}:{second}"})
    assert conf.workers == 3
    assert conf.reload_batch == 2
    assert conf.config_file == (first, second)


def test_config_file_variable_skips_empty_components(tmp_path: Path) -> None:
    path = write(tmp_path, "1.conf", "[supervise]\nworkers = 2\n")
    conf = config.load({}, [], {"SUPERVISE_CONFIG_FILE": f":{path}::"})
    assert conf.config_file == (path,)
    assert conf.workers == 2


def test_flag_files_replace_the_config_file_variable(tmp_path: Path) -> None:
    from_env = write(tmp_path, "env.conf", "[supervise]\nworkers = 2\nreload_batch = 2\n")
    from_flag = write(tmp_path, "flag.conf", "[supervise]\nworkers = 3\n")
    conf = config.load({}, [from_flag], {"SUPERVISE_CONFIG_FILE": from_env})
    assert conf.workers == 3
    assert conf.reload_batch == 1
    assert conf.config_file == (from_flag,)


def test_missing_file_named_by_the_config_file_variable(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.conf")
    with pytest.raises(ConfigError) as error:
        config.load({}, [], {"SUPERVISE_CONFIG_FILE": missing})
    assert_one_line(error, missing)


# ----- bad values -------------------------------------------------------------------------

BAD_VALUES = [
    ("workers", "0"),
    ("workers", "-3"),
    ("workers", "abc"),
    ("workers", "1.5"),
    ("reload_batch", "0"),
    ("max_restarts", "-1"),
    ("graceful_shutdown_timeout", "-1"),
    ("worker_ready_timeout", "0"),
    ("graceful_shutdown_timeout", "nan"),
    ("graceful_shutdown_timeout", "inf"),
    ("graceful_shutdown_timeout", "-inf"),
    ("graceful_shutdown_timeout", "soon"),
    ("worker_ready_timeout", "NaN"),
    ("reload_method", "bogus"),
    ("reload_method", "Rolling"),
    ("preload", "maybe"),
    ("log_level", "LOUD"),
    ("host", ""),
    ("log_file", ""),
]
BAD_IDS = [f"{name}={text or 'empty'}" for name, text in BAD_VALUES]


@pytest.mark.parametrize(("name", "text"), BAD_VALUES, ids=BAD_IDS)
def test_bad_value_in_supervise_section(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path, "a.conf", f"[supervise]\n{name} = {text}\n")
    with pytest.raises(ConfigError) as error:
        config.load({}, [path], {})
    assert_one_line(error, name, path)


@pytest.mark.parametrize(("name", "text"), BAD_VALUES, ids=BAD_IDS)
def test_bad_value_in_default_section(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path, "nova.conf", NOVA_DEFAULTS.replace("my_ip", f"{name} = {text}\nmy_ip"))
    with pytest.raises(ConfigError) as error:
        config.load({}, [path], {})
    assert_one_line(error, name, path)


@pytest.mark.parametrize(("name", "text"), BAD_VALUES, ids=BAD_IDS)
def test_bad_value_in_environment(name: str, text: str) -> None:
    variable = "SUPERVISE_" + name.upper()
    with pytest.raises(ConfigError) as error:
        config.load({}, [], {variable: text})
    assert_one_line(error, name, variable)


@pytest.mark.parametrize(("name", "text"), BAD_VALUES, ids=BAD_IDS)
def test_bad_value_of_a_flag(name: str, text: str) -> None:
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError) as error:
        config.parse(name, text, flag)
    assert_one_line(error, name, flag)


def test_zero_graceful_shutdown_timeout_means_no_limit_as_in_oslo(tmp_path: Path) -> None:
    path = write(tmp_path, "nova.conf", "[DEFAULT]\ngraceful_shutdown_timeout = 0\n")
    assert config.load({}, [path], {}).graceful_shutdown_timeout == 0


def test_bad_value_names_the_file_it_came_from(tmp_path: Path) -> None:
    good = write(tmp_path, "good.conf", "[supervise]\nworkers = 2\n")
    bad = write(tmp_path, "bad.conf", "[supervise]\nworkers = 0\n")
    with pytest.raises(ConfigError) as error:
        config.load({}, [good, bad], {})
    message = assert_one_line(error, bad, "workers")
    assert good not in message


def test_bad_value_is_reported_even_when_a_later_source_overrides_it(tmp_path: Path) -> None:
    path = write(tmp_path, "a.conf", "[supervise]\nworkers = abc\n")
    with pytest.raises(ConfigError) as error:
        config.load({"workers": 2}, [path], {})
    assert_one_line(error, path, "workers")


# ----- unreadable files -------------------------------------------------------------------


def unreadable_file(tmp_path: Path, kind: str) -> str:
    if kind == "missing":
        return str(tmp_path / "missing.conf")
    if kind == "directory":
        (tmp_path / "a-directory.conf").mkdir()
        return str(tmp_path / "a-directory.conf")
    path = tmp_path / f"{kind}.conf"
    if kind == "no-section-header":
        path.write_text("workers = 2\n[supervise]\nworkers = 3\n")
    elif kind == "garbage-line":
        path.write_text("[supervise]\nworkers = 2\nthis line has no equals sign\n[other\n")
    elif kind == "not-utf-8":
        path.write_bytes(b"[supervise]\nhost = caf\xe9\xff\xfe\n")
    return str(path)


@pytest.mark.parametrize(
    "kind",
    ["missing", "directory", "no-section-header", "garbage-line", "not-utf-8"],
)
def test_unreadable_file_is_one_line_error(tmp_path: Path, kind: str) -> None:
    path = unreadable_file(tmp_path, kind)
    with pytest.raises(ConfigError) as error:
        config.load({}, [path], {})
    assert_one_line(error, path)


def test_unreadable_file_after_a_good_one(tmp_path: Path) -> None:
    good = write(tmp_path, "good.conf", "[supervise]\nworkers = 2\n")
    missing = str(tmp_path / "missing.conf")
    with pytest.raises(ConfigError) as error:
        config.load({}, [good, missing], {})
    assert_one_line(error, missing)


def test_empty_file_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.conf", "")
    assert config.load({}, [path], {}).config_file == (path,)


# ----- JSON, for handing the configuration to workers -------------------------------------


def test_json_round_trip_of_defaults() -> None:
    conf = config.load({}, [], {})
    assert Config.from_json(json.loads(json.dumps(conf.to_json()))) == conf


def test_json_round_trip_of_every_option(tmp_path: Path) -> None:
    first = write(tmp_path, "1.conf", "[supervise]\nworkers = 3\nlog_file = /tmp/x.log\n")
    second = write(tmp_path, "2.conf", "[DEFAULT]\ngraceful_shutdown_timeout = 2.5\n")
    conf = config.load(
        {"preload": True, "reload_method": "mutate"},
        [first, second],
        {"SUPERVISE_LOG_LEVEL": "debug", "SUPERVISE_HOST": "héte-1"},
    )
    data = conf.to_json()
    assert data["config_file"] == [first, second]
    again = Config.from_json(json.loads(json.dumps(data)))
    assert again == conf
    assert again.config_file == (first, second)
    assert isinstance(again.config_file, tuple)
    assert {f.name for f in dataclasses.fields(Config)} == set(data)
