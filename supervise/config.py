"""Options: defaults, config files, environment and flags, merged and validated.

Precedence, lowest first: built-in defaults, INI config files (in the order given),
``SUPERVISE_<OPTION>`` environment variables, command-line flags. Config files use
nova.conf option names; supervise reads ``[DEFAULT]`` (ignoring the many options that
belong to the hosted service), ``[supervise]`` (where an unknown name is an error) and
oslo.messaging's ``[oslo_messaging_notifications]`` (its ``driver``, ``topics`` and
``transport_url``; oslo's other options there are ignored). An option of such a group has a
flat name elsewhere: ``driver`` there is ``notification_driver`` in ``[supervise]``,
``SUPERVISE_NOTIFICATION_DRIVER`` and ``--notification-driver``.
"""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
import re
import socket
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from supervise.cgroup import available_cpus
from supervise.rpc.transport_url import BadTransportURL, kombu_urls, local_transport_url

ENV_PREFIX = "SUPERVISE_"
SECTION = "supervise"
NOTIFICATIONS_SECTION = "oslo_messaging_notifications"


class ConfigError(Exception):
    """Bad configuration; its message is one line meant for an operator."""


def default_state_dir() -> str:
    """/var/lib/supervise for root, else the XDG state directory."""
    if os.geteuid() == 0:
        return "/var/lib/supervise"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "supervise")


def default_runtime_dir() -> str:
    """Where the control socket lives: systemd's RuntimeDirectory when it set one, else
    /run/supervise for root, else the XDG runtime directory, else under the state directory."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return os.environ["RUNTIME_DIRECTORY"].split(":")[0]
    if os.geteuid() == 0:
        return "/run/supervise"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "supervise")
    return os.path.join(default_state_dir(), "run")


# The range of every duration and count, chosen so that the code can honour any accepted
# value (docs/decisions.md). Every wait ends in epoll or select, and epoll's timeout is a C int
# of milliseconds (24.8 days at most): durations stop at 7 days, and start at its 1 ms.
MAX_SECONDS = 7 * 86400
MIN_SECONDS = 0.001
# The master holds a socket per worker, two per slot in a rolling reload: 256 workers and a
# reload of all of them at once take about 520 descriptors, within the usual soft limit, 1024.
MAX_WORKERS = 256
MAX_THREADS = 1024  # per worker; started on demand; well within AMQP's 16-bit prefetch count
MAX_MESSAGE_SIZE = 256 << 20  # RabbitMQ's own limit is 128 MiB unless raised (512 MiB at most)
MAX_RESTARTS = 1000
MAX_REDELIVERIES = 1000
# AMQP tunes the heartbeat in whole seconds, in a 16-bit field; under 1 s py-amqp sees
# heartbeats missed and resets an idle connection every second.
MAX_AMQP_HEARTBEAT = 65535
MAX_REQUESTS = 2**31 - 1
MAX_PORT = 65535
KIB = 1024
SIZE_UNITS = {"": 1, "K": KIB, "M": KIB**2, "G": KIB**3, "T": KIB**4}
MIN_WORKER_MEMORY = KIB**2  # 1 MiB: a limit below any Python process's RSS is a typo
MAX_WORKER_MEMORY = KIB**4


@dataclass(frozen=True)
class Count:
    """A whole number in [minimum, maximum]."""

    minimum: int
    maximum: int

    @property
    def range(self) -> str:
        return f"{self.minimum} to {self.maximum}"

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"must be from {self.range}, got {value}")
        return value


@dataclass(frozen=True)
class Seconds:
    """A finite number of seconds in [minimum, maximum], or 0 (no limit, off) with `zero`."""

    minimum: float = MIN_SECONDS
    maximum: float = MAX_SECONDS
    zero: bool = False

    @property
    def range(self) -> str:
        span = f"{self.minimum:g} to {self.maximum:g}"
        return f"0 or {span}" if self.zero else span

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {text!r}") from None
        if value == 0 and self.zero:
            return 0.0
        if not (math.isfinite(value) and self.minimum <= value <= self.maximum):
            raise ValueError(f"must be {self.range} seconds, got {text.strip()!r}")
        return value


@dataclass(frozen=True)
class MemorySize:
    """Bytes, with an optional binary suffix K, M, G or T (``512M``), in [minimum, maximum];
    or 0: no limit."""

    minimum: int = MIN_WORKER_MEMORY
    maximum: int = MAX_WORKER_MEMORY

    @property
    def range(self) -> str:
        return f"0 or {_with_unit(self.minimum)} to {_with_unit(self.maximum)}"

    def __call__(self, text: str) -> int:
        match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
        if match is None:
            raise ValueError(f"expected bytes, optionally with K, M, G or T, got {text!r}")
        value = int(match.group(1)) * SIZE_UNITS[match.group(2).upper()]
        if value and not self.minimum <= value <= self.maximum:
            raise ValueError(f"must be {self.range}, got {text.strip()!r}")
        return value


def _with_unit(size: int) -> str:
    for unit in "TGMK":
        if size % SIZE_UNITS[unit] == 0:
            return f"{size // SIZE_UNITS[unit]}{unit}"
    return str(size)


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _transport_url(text: str) -> str:
    try:
        kombu_urls(text)
    except BadTransportURL as error:
        raise ValueError(str(error)) from None
    return text


NOTIFICATION_DRIVERS = ("messagingv2", "messaging", "log", "noop")


def _notification_drivers(text: str) -> tuple[str, ...]:
    """oslo's multi-valued ``driver``: a key repeated in a file (read as one value a line),
    or, where a key cannot repeat (a variable, a flag), a comma-separated list."""
    drivers = tuple(name.strip() for name in re.split(r"[,\n]", text) if name.strip())
    for name in drivers:
        if name not in NOTIFICATION_DRIVERS:
            raise ValueError(f"expected {', '.join(NOTIFICATION_DRIVERS)}, got {name!r}")
    return drivers


def _topics(text: str) -> tuple[str, ...]:
    """oslo's ``topics`` list: comma-separated names, each a part of a routing key."""
    topics = tuple(_text(name.strip()) for name in text.split(","))
    if any(not name or any(c in name for c in "#* ") for name in topics):
        raise ValueError(f"expected comma-separated topic names, got {text!r}")
    return topics


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(f"expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {text!r}")
    return level


def _text(text: str) -> str:
    """Non-empty UTF-8 text without control characters: it goes into URLs, file names,
    queue names, the services table and log lines. A byte that is not UTF-8 reaches Python
    from argv or the environment as a lone surrogate."""
    if not text.strip():
        raise ValueError("must not be empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"not valid UTF-8: {text!r}") from None
    if any(unicodedata.category(character) == "Cc" for character in text):
        raise ValueError(f"must not hold control characters: {text!r}")
    return text


def _option(default: Any, parse: Callable[[str], Any], help: str, **kwargs: Any) -> Any:
    """A Config field: `parse` turns the text of a file, variable or flag into its value; a
    Count or Seconds also gives the option its range."""
    metadata = {"parse": parse, "help": help, **kwargs}
    if isinstance(parse, Count | Seconds | MemorySize):
        metadata["range"] = parse.range
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    """Every option of the master and its workers. Build it with `load`."""

    workers: int = _option(
        lambda: min(available_cpus(), MAX_WORKERS),
        Count(1, MAX_WORKERS),
        "worker processes (default: CPUs this process may use, at most the maximum)",
    )
    host: str = _option(socket.gethostname, _text, "host name the services register under")
    graceful_shutdown_timeout: float = _option(
        60.0,
        Seconds(zero=True),
        "seconds a drain may take before the rest are killed; 0: no limit",
    )
    reload_method: str = _option(
        "rolling", _choice("rolling", "mutate"), "how SIGHUP reloads: rolling or mutate"
    )
    reload_batch: int = _option(
        1, Count(1, MAX_WORKERS), "workers replaced at a time in a rolling reload"
    )
    worker_ready_timeout: float = _option(
        60.0, Seconds(), "seconds a new worker may take to report ready"
    )
    preload: bool = _option(
        False, _boolean, "import the service in the master before forking", flag="store_true"
    )
    max_restarts: int = _option(
        5, Count(0, MAX_RESTARTS), "unexpected exits of one slot tolerated within restart_window"
    )
    restart_window: float = _option(60.0, Seconds(), "seconds over which restarts count")
    restart_backoff: float = _option(
        0.1, Seconds(), "first respawn delay of a crash loop; doubles per crash"
    )
    restart_backoff_max: float = _option(30.0, Seconds(), "longest respawn delay")
    healthy_uptime: float = _option(
        10.0, Seconds(), "uptime after which a worker's crash no longer counts as a loop"
    )
    heartbeat_interval: float = _option(
        5.0, Seconds(), "seconds between a worker's heartbeats to the master"
    )
    worker_timeout: float = _option(
        60.0,
        Seconds(zero=True),
        "seconds a worker's consume loop, or every one of its handler threads, may be stuck "
        "before the worker is killed (SIGABRT, then SIGKILL) and replaced; 0: never",
    )
    rpc_handler_timeout: float = _option(
        60.0, Seconds(zero=True), "log an RPC handler still running after this; 0: never"
    )
    max_requests_per_worker: int = _option(
        0, Count(0, MAX_REQUESTS), "replace a worker after it handled this many messages; 0: never"
    )
    max_requests_jitter: int = _option(
        0, Count(0, MAX_REQUESTS), "add up to this many to each worker's max_requests_per_worker"
    )
    max_memory_per_worker: int = _option(
        0, MemorySize(), "replace a worker whose RSS passes this (512M, 2G); 0: never"
    )
    max_worker_age: float = _option(
        0.0, Seconds(zero=True), "replace a worker after this many seconds; 0: never"
    )
    executor: str = _option(
        "threading",
        _choice("threading", "eventlet"),
        "what runs RPC methods: threading, or eventlet (green threads; extra eventlet)",
    )
    runtime_dir: str = _option(default_runtime_dir, _text, "directory of the control socket")
    control_socket: str | None = _option(
        None, _text, "path of the master's control socket (default: runtime_dir/SERVICE.sock)"
    )
    metrics_port: int = _option(
        0, Count(0, MAX_PORT), "serve Prometheus metrics from the master on this TCP port; 0: off"
    )
    metrics_host: str = _option("127.0.0.1", _text, "address the metrics endpoint listens on")
    transport_url: str | None = _option(
        None,
        _transport_url,
        "message broker: rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost (oslo style) "
        "or local:///path/queue.db; default: the local transport's file in state_dir",
    )
    control_exchange: str = _option("openstack", _text, "topic exchange of RPC messages")
    topic: str | None = _option(None, _text, "RPC topic of the service (default: its own)")
    executor_thread_pool_size: int = _option(
        64, Count(1, MAX_THREADS), "threads running RPC methods in each worker; also its prefetch"
    )
    rpc_response_timeout: float = _option(60.0, Seconds(), "seconds a call waits")
    max_message_size: int = _option(
        16 << 20, Count(1, MAX_MESSAGE_SIZE), "bytes; a larger message gets an error reply"
    )
    max_redeliveries: int = _option(
        3,
        Count(0, MAX_REDELIVERIES),
        "deliveries that may die with a message before it is dead-lettered",
    )
    publisher_confirms: bool = _option(
        False, _boolean, "wait for the broker to confirm each publish", flag="store_true"
    )
    heartbeat_timeout_threshold: float = _option(
        60.0,
        Seconds(1, MAX_AMQP_HEARTBEAT, zero=True),
        "AMQP heartbeat timeout in seconds; 0 disables heartbeats",
    )
    report_interval: float = _option(
        10.0,
        Seconds(zero=True),
        "seconds between a service's heartbeats in the database; 0: none",
    )
    service_down_time: float = _option(
        60.0, Seconds(), "seconds without a heartbeat after which a service is down"
    )
    periodic_enable: bool = _option(True, _boolean, "run the managers' periodic tasks")
    periodic_fuzzy_delay: float = _option(
        60.0,
        Seconds(zero=True),
        "the periodic tasks start after a random delay up to this many seconds",
    )
    periodic_interval_max: float = _option(
        60.0, Seconds(), "longest sleep between two runs of the periodic tasks"
    )
    periodic_workers: str = _option(
        "leader", _choice("leader", "all"), "workers of a host that run periodic tasks"
    )
    manager_shutdown_timeout: float = _option(
        30.0, Seconds(zero=True), "seconds a manager's graceful_shutdown may take on stop"
    )
    state_dir: str = _option(
        default_state_dir, _text, "where the embedded database and queue files live"
    )
    database_url: str | None = _option(
        None, _text, "SQLAlchemy URL of the services database (default: SQLite in state_dir)"
    )
    log_level: str = _option("INFO", _log_level, "DEBUG, INFO, WARNING, ERROR or CRITICAL")
    log_file: str | None = _option(None, _text, "append logs to this file instead of stderr")
    log_format: str = _option(
        "text", _choice("text", "json"), "text, or json: one JSON object a line, for machines"
    )
    notification_driver: tuple[str, ...] = _option(
        (),
        _notification_drivers,
        "notification drivers, comma-separated: messagingv2, messaging, log, noop "
        "(default: none, notifications off)",
        section=(NOTIFICATIONS_SECTION, "driver"),
    )
    notification_topics: tuple[str, ...] = _option(
        ("versioned_notifications",),
        _topics,
        "topics of the notifications, comma-separated",
        section=(NOTIFICATIONS_SECTION, "topics"),
    )
    notification_transport_url: str | None = _option(
        None,
        _transport_url,
        "message broker of the notifications (default: transport_url)",
        section=(NOTIFICATIONS_SECTION, "transport_url"),
    )
    config_file: tuple[str, ...] = field(default=(), metadata={"help": "INI config file"})

    @property
    def transport(self) -> str:
        """The transport URL in force: the configured one, else the local transport's file in
        the state directory (no broker needed on one host)."""
        return self.transport_url or local_transport_url(self.state_dir)

    @property
    def notification_transport(self) -> str:
        """The notifications' transport URL in force: their own, else the RPC transport."""
        return self.notification_transport_url or self.transport

    @property
    def database(self) -> str:
        """The database URL in force: the configured one, else SQLite in the state directory."""
        return self.database_url or f"sqlite:///{os.path.join(self.state_dir, 'supervise.db')}"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "config_file": list(self.config_file)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Config:
        # JSON has no tuples: the multi-valued options come back as lists
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def settable_fields() -> list[dataclasses.Field]:
    """Options an operator sets by name (all but the list of config files)."""
    return [f for f in dataclasses.fields(Config) if "parse" in f.metadata]


_BY_NAME = {f.name: f for f in settable_fields()}
# The options of other sections, by section and key: [oslo_messaging_notifications] driver is
# notification_driver.
_BY_SECTION: dict[str, dict[str, str]] = {}
for _field in settable_fields():
    if "section" in _field.metadata:
        _section, _key = _field.metadata["section"]
        _BY_SECTION.setdefault(_section, {})[_key] = _field.name
# Multi-valued (oslo's MultiStrOpt), by the names they have in files.
_MULTI_VALUED = {"notification_driver", "driver"}


class _RepeatedKeys(dict):
    """A section's keys as oslo.config reads them: the last of a repeated key wins, but a
    multi-valued option keeps every value, one a line (configparser joins a value's lines
    with newlines)."""

    def __setitem__(self, key: str, value: Any) -> None:
        current = self.get(key)
        if key in _MULTI_VALUED and isinstance(value, list) and isinstance(current, list):
            current.extend(value)  # both values are still being read: lines of one
        else:
            super().__setitem__(key, value)


def parse(name: str, text: str, origin: str, shown_as: str | None = None) -> Any:
    """The value of option `name`; a ConfigError names `origin` and the option, as the
    operator wrote it (`shown_as`: a key of another section)."""
    try:
        return _BY_NAME[name].metadata["parse"](text)
    except ValueError as error:
        raise ConfigError(f"{origin}: {shown_as or name}: {error}") from None


def read_config_files(paths: Iterable[str]) -> dict[str, Any]:
    """Values from the INI files, later files overriding earlier ones."""
    values: dict[str, Any] = {}
    for path in paths:
        # [DEFAULT] read as an ordinary section, so [supervise] shows only its own keys;
        # not strict, as oslo.config allows a key to repeat (multi-valued options).
        parser = configparser.ConfigParser(
            interpolation=None,
            strict=False,
            default_section="\0no default section",
            dict_type=_RepeatedKeys,
        )
        try:
            with open(path, encoding="utf-8") as stream:
                parser.read_file(stream)
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
        except (configparser.Error, UnicodeDecodeError) as error:
            first_line = str(error).splitlines()[0]
            raise ConfigError(f"cannot parse config file {path}: {first_line}") from None
        if parser.has_section("DEFAULT"):
            for name, text in parser.items("DEFAULT"):
                if name in _BY_NAME:
                    values[name] = parse(name, text, path)
        if parser.has_section(SECTION):
            for name, text in parser.items(SECTION):
                if name not in _BY_NAME:
                    raise ConfigError(f"{path}: [{SECTION}] has an unknown option {name!r}")
                values[name] = parse(name, text, path)
        for section, names in _BY_SECTION.items():
            if parser.has_section(section):
                for key, text in parser.items(section):
                    if key in names:  # oslo's other options of the group are not ours
                        values[names[key]] = parse(names[key], text, path, f"[{section}] {key}")
    return values


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, text in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG_FILE":
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in _BY_NAME:
            raise ConfigError(f"unknown option in the environment: {key}")
        values[name] = parse(name, text, key)
    return values


def config_files_from(environ: Mapping[str, str], flag_files: Iterable[str]) -> tuple[str, ...]:
    """Config files: those named by flags, else a colon-separated SUPERVISE_CONFIG_FILE."""
    files = tuple(flag_files)
    if files:
        return files
    from_env = environ.get(ENV_PREFIX + "CONFIG_FILE", "")
    return tuple(path for path in from_env.split(":") if path)


def load(
    flags: Mapping[str, Any],
    config_files: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Config:
    """Merge every source into a Config. `flags` holds only the options given on the command
    line, already parsed; `defaults` replace built-in defaults (a service's own, such as its
    worker count). Raises ConfigError with a one-line message."""
    environ = os.environ if environ is None else environ
    files = config_files_from(environ, config_files)
    values = dict(defaults or {})
    values.update(read_config_files(files))
    values.update(read_environment(environ))
    values.update(flags)
    conf = Config(**values, config_file=files)
    if conf.preload and conf.executor == "eventlet":
        # A module imported before eventlet's monkey-patching keeps the real locks it made.
        raise ConfigError(
            "preload and executor eventlet exclude each other: preload imports the service "
            "in the master, before the workers monkey-patch"
        )
    return conf
