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


def test_oslo_messaging_notifications_options_as_oslo_reads_them(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "nova.conf",
        NOVA_DEFAULTS
        + "[oslo_messaging_notifications]\n"
        + "driver = messagingv2\n"
        + "driver = log\n"  # multi-valued: both
        + "topics = versioned_notifications, notifications\n"
        + "retry = 5\n"  # oslo's own option: not supervise's, ignored
        + "transport_url = rabbit://n:secret@notify:5672/\n"
        + "[supervise]\nworkers = 2\nworkers = 3\n",  # single-valued: the last wins
    )
    conf = config.load({}, [path], {})
    assert conf.notification_driver == ("messagingv2", "log")
    assert conf.notification_topics == ("versioned_notifications", "notifications")
    assert conf.notification_transport == "rabbit://n:secret@notify:5672/"
    assert conf.workers == 3
    assert Config.from_json(json.loads(json.dumps(conf.to_json()))) == conf


def test_notification_defaults_and_other_sources() -> None:
    conf = config.load({}, [], {})
    assert (conf.notification_driver, conf.notification_topics) == (
        (),
        ("versioned_notifications",),
    )
    assert conf.notification_transport == conf.transport  # the RPC transport
    conf = config.load(
        {"notification_topics": ("flag",)},
        [],
        {"SUPERVISE_NOTIFICATION_DRIVER": "messaging, noop", "SUPERVISE_NOTIFICATION_TOPICS": "e"},
    )
    assert (conf.notification_driver, conf.notification_topics) == (
        ("messaging", "noop"),
        ("flag",),
    )


def test_a_bad_notification_option_in_a_file_is_named_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, "a.conf", "[oslo_messaging_notifications]\ndriver = routing\n")
    with pytest.raises(ConfigError) as error:
        config.load({}, [path], {})
    assert_one_line(error, path, "[oslo_messaging_notifications] driver", "'routing'")


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
    ("workers", "257"),
    ("workers", "1000000000000"),
    ("reload_batch", "257"),
    ("worker_ready_timeout", "9999999"),
    ("graceful_shutdown_timeout", "9999999"),
    ("heartbeat_interval", "1e300"),
    ("heartbeat_interval", "0.0001"),
    ("heartbeat_timeout_threshold", "0.5"),
    ("heartbeat_timeout_threshold", "65536"),
    ("report_interval", "-0.5"),
    ("executor_thread_pool_size", "1025"),
    ("max_message_size", "268435457"),
    ("host", "compute\x1b[2J"),
    ("topic", "a\tb"),
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


# ----- ranges -----------------------------------------------------------------------------

DAY = 86400
# The documented range of every duration and count (README's options table): (minimum,
# maximum, whether 0 is accepted too, meaning no limit or off).
RANGES = {
    "workers": (1, 256, False),
    "reload_batch": (1, 256, False),
    "max_restarts": (0, 1000, False),
    "executor_thread_pool_size": (1, 1024, False),
    "max_message_size": (1, 256 << 20, False),
    "max_redeliveries": (0, 1000, False),
    "graceful_shutdown_timeout": (0.001, 7 * DAY, True),
    "worker_ready_timeout": (0.001, 7 * DAY, False),
    "restart_window": (0.001, 7 * DAY, False),
    "restart_backoff": (0.001, 7 * DAY, False),
    "restart_backoff_max": (0.001, 7 * DAY, False),
    "healthy_uptime": (0.001, 7 * DAY, False),
    "heartbeat_interval": (0.001, 7 * DAY, False),
    "rpc_response_timeout": (0.001, 7 * DAY, False),
    "heartbeat_timeout_threshold": (1, 65535, True),
    "report_interval": (0.001, 7 * DAY, True),
    "service_down_time": (0.001, 7 * DAY, False),
    "periodic_fuzzy_delay": (0.001, 7 * DAY, True),
    "periodic_interval_max": (0.001, 7 * DAY, False),
    "manager_shutdown_timeout": (0.001, 7 * DAY, True),
    "worker_timeout": (0.001, 7 * DAY, True),
    "rpc_handler_timeout": (0.001, 7 * DAY, True),
    "max_worker_age": (0.001, 7 * DAY, True),
    "max_requests_per_worker": (0, 2**31 - 1, False),
    "max_requests_jitter": (0, 2**31 - 1, False),
    "metrics_port": (0, 65535, False),
}
# Sizes take a unit suffix, so their parser is not a Count: tested on their own below.
SIZES = {"max_memory_per_worker"}


def test_every_duration_and_count_has_its_documented_range() -> None:
    # config.py has `from __future__ import annotations`: a field's type is its source text
    numeric = {f.name for f in config.settable_fields() if f.type in ("int", "float")}
    assert numeric == set(RANGES) | SIZES
    for name, (minimum, maximum, zero) in RANGES.items():
        parse = config._BY_NAME[name].metadata["parse"]
        assert (parse.minimum, parse.maximum) == (minimum, maximum), name
        assert getattr(parse, "zero", False) is zero, name


def boundary_cases() -> list[tuple[str, str, bool]]:
    """(option, text, accepted) at and just beyond each end of every range."""
    cases = []
    for name, (minimum, maximum, zero) in RANGES.items():
        if isinstance(maximum, int) and isinstance(minimum, int) and not zero:
            cases += [(name, str(minimum), True), (name, str(maximum), True)]
            cases += [(name, str(minimum - 1), False), (name, str(maximum + 1), False)]
            continue
        cases += [(name, repr(float(minimum)), True), (name, repr(float(maximum)), True)]
        cases += [(name, repr(minimum * 0.99), False), (name, repr(maximum * 1.000001), False)]
        cases += [(name, "0", zero), (name, "-0.001", False), (name, "inf", False)]
        cases += [(name, "nan", False), (name, "1e300", False)]
    return cases


@pytest.mark.parametrize(
    ("name", "text", "accepted"),
    boundary_cases(),
    ids=[f"{n}={t}" for n, t, _ in boundary_cases()],
)
def test_range_boundaries(name: str, text: str, accepted: bool) -> None:
    if accepted:
        assert config.parse(name, text, "--x") == float(text)
        return
    with pytest.raises(ConfigError) as error:
        config.parse(name, text, "--x")
    assert_one_line(error, name, "must be")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[("0", 0), ("1M", 1 << 20), ("512M", 512 << 20), ("2G", 2 << 30), ("1T", 1 << 40)],
        *[("1048576", 1 << 20), ("64 MiB", 64 << 20), ("300k", None), ("1048575", None)],
        *[("1025G", None), ("-1M", None), ("1.5G", None), ("M", None), ("", None)],
    ],
)
def test_memory_sizes(text: str, value: int | None) -> None:
    if value is not None:
        assert config.parse("max_memory_per_worker", text, "--x") == value
        return
    with pytest.raises(ConfigError) as error:
        config.parse("max_memory_per_worker", text, "--x")
    assert_one_line(error, "max_memory_per_worker")


def test_out_of_range_names_the_range() -> None:
    with pytest.raises(ConfigError) as error:
        config.load({}, [], {"SUPERVISE_WORKERS": str(10**12)})
    assert_one_line(error, "SUPERVISE_WORKERS", "1 to 256", str(10**12))
    with pytest.raises(ConfigError) as error:
        config.load({}, [], {"SUPERVISE_GRACEFUL_SHUTDOWN_TIMEOUT": "9999999"})
    assert_one_line(error, "0 or 0.001 to 604800", "9999999")


@pytest.mark.parametrize("value", ["h\udcff", "caf\udce9"])
def test_text_from_bytes_that_are_not_utf8_is_refused(value: str) -> None:
    """os.environ holds a byte that is not UTF-8 as a lone surrogate (PEP 383)."""
    with pytest.raises(ConfigError) as error:
        config.load({}, [], {"SUPERVISE_HOST": value})
    message = assert_one_line(error, "SUPERVISE_HOST", "UTF-8")
    message.encode("utf-8")  # printable as it is: the surrogate is escaped


# ----- the README ---------------------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_table(heading: str) -> list[list[str]]:
    """The rows of the first table after `heading`, as lists of cells."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index(heading) :]
    rows = []
    for line in after.splitlines()[1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and its rule


def test_readme_options_table_shows_each_range() -> None:
    shown = {}
    for row in readme_table("### Options"):
        names = [part.strip(" `") for part in row[0].split("/")]
        shown[names[-1]] = row[2]
    for option in config.settable_fields():
        assert option.name in shown, f"{option.name} missing from the README"
        assert shown[option.name] == option.metadata.get("range", ""), option.name


def test_readme_exit_codes_match_exitcodes() -> None:
    from supervise import exitcodes

    shown = {int(row[0]) for row in readme_table("## Exit codes")}
    assert shown == {
        exitcodes.OK,
        exitcodes.FAILED,
        exitcodes.USAGE,
        exitcodes.CRASH_LOOP,
        exitcodes.UNCLEAN_STOP,
        exitcodes.NOT_RUNNING,
    }
