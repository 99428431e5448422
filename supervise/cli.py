"""Command line: ``supervise [run] [options] SERVICE``.

Bad input prints one line, ``supervise: error: ...``, and exits 2; see the README's exit codes.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import supervise
from supervise import (
    config,
    control_client,
    exitcodes,
    hosted,
    logs,
    master,
    private_files,
    worker_policy,
)
from supervise.config import ConfigError
from supervise.rpc.transport_url import BadTransportURL
from supervise.systemd import Notifier
from supervise.terminal import printable

SUBCOMMANDS = ("run", "call", "service", "db", *control_client.VERBS)

LOG = logging.getLogger(__name__)
_FIELDS = {f.name: f for f in config.settable_fields()}


class UsageError(Exception):
    """Bad command-line input; the message is one line."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints its usage and the error; an operator needs only the error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and those of the subcommands `run` and `call`."""
    parser = _OneLineParser(
        prog="supervise",
        description="A pre-fork supervisor for Python RPC services.",
        epilog="'run' is implied when the first word is not a subcommand.",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="show the version")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="start a master and its workers (the default)")
    run.add_argument(
        "service",
        metavar="SERVICE",
        help="a registered service name or module:Class",
    )
    _add_config_options(run, [f.name for f in config.settable_fields()])

    call = commands.add_parser(
        "call",
        help="call (or cast to) a method of an RPC service and print the result as JSON",
        description="Call METHOD on TOPIC with key=value arguments (values are JSON, else "
        "strings) and print the result as JSON. Exit 1 on a remote error, a timeout or an "
        "unreachable broker.",
    )
    call.add_argument("topic", metavar="TOPIC")
    call.add_argument("method", metavar="METHOD")
    call.add_argument("arguments", nargs="*", metavar="KEY=VALUE")
    call.add_argument("--json", metavar="ARGS", help="arguments as one JSON object")
    call.add_argument("--server", help="call the queue of this host only")
    call.add_argument("--cast", action="store_true", help="send without waiting for a reply")
    call.add_argument("--fanout", action="store_true", help="cast to every server of TOPIC")
    call.add_argument("--namespace", help="endpoint namespace")
    call.add_argument("--api-version", dest="api_version", help="requested API version")
    call.add_argument(
        "--timeout",
        metavar="S",
        help=_described("seconds to wait for the reply", "rpc_response_timeout"),
    )
    _add_config_options(call, CALL_OPTIONS)
    _add_service_parsers(commands)
    _add_db_parsers(commands)
    _add_control_parsers(commands)
    return parser, {"run": run, "call": call}


# Without a URL the transport and the database are files in the state directory: every
# subcommand that reaches one takes --state-dir, as run does.
CALL_OPTIONS = ["transport_url", "state_dir", "control_exchange", "publisher_confirms", "log_level"]
DATABASE_OPTIONS = ["database_url", "state_dir", "log_level"]
# A change of a service's record is notified: the options of the notifications and of the
# transport they default to.
NOTIFICATION_OPTIONS = [
    "notification_driver",
    "notification_topics",
    "notification_transport_url",
    "transport_url",
    "control_exchange",
]


def _add_service_parsers(commands: argparse._SubParsersAction) -> None:
    service = commands.add_parser("service", help="list or change rows of the services table")
    actions = service.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="id, binary, host, topic, status, state, ...")
    # dests differ from the option names: `host` is also the config option of this host
    listing.add_argument("--host", dest="service_host", help="only services of this host")
    listing.add_argument(
        "--binary", dest="service_binary", help="only services of this binary (nova-conductor)"
    )
    parsers = [listing]
    for action, text in (
        ("enable", "enable a service"),
        ("disable", "disable a service (it keeps running; schedulers skip it)"),
        ("force-down", "mark a service down now, whatever its heartbeat says"),
        ("delete", "delete a service's record (it registers again when it starts)"),
    ):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("service_host", metavar="HOST")
        parser.add_argument("service_binary", metavar="BINARY")
        parsers.append(parser)
        if action == "disable":
            parser.add_argument("--reason", help="why, shown in the list")
        if action == "force-down":
            parser.add_argument("--unset", action="store_true", help="undo a force-down")
    for parser in parsers:
        parser.add_argument("--json", action="store_true", help="print JSON")
        names = [*DATABASE_OPTIONS, "report_interval", "service_down_time"]
        _add_config_options(parser, names if parser is listing else names + NOTIFICATION_OPTIONS)


def _add_control_parsers(commands: argparse._SubParsersAction) -> None:
    """The verbs that ask a running master through its control socket."""
    helps = {
        "status": "show a running master's workers (a table, or --json)",
        "scale": "run N workers",
        "reload": "reload, as SIGHUP does",
        "drain": "every worker finishes its calls in flight and takes no new ones; "
        "the master and its workers stay up",
        "resume": "the workers take calls again after a drain",
        "stop": "stop, as SIGTERM does (draining), or with --fast as SIGQUIT",
    }
    for verb in control_client.VERBS:
        parser = commands.add_parser(verb, help=helps[verb], description=helps[verb])
        if verb == "scale":
            parser.add_argument("count", metavar="N")  # not "workers", the option of run
        parser.add_argument(
            "service", metavar="SERVICE", nargs="?", help="the master's service (its socket's name)"
        )
        parser.add_argument(
            "--socket",
            dest="control_socket",
            default=argparse.SUPPRESS,
            metavar="PATH",
            help="the master's control socket",
        )
        parser.add_argument("--timeout", metavar="S", help="seconds to wait for the answer (5)")
        if verb == "status":
            parser.add_argument("--json", action="store_true", help="print JSON")
        if verb == "stop":
            parser.add_argument("--fast", action="store_true", help="as SIGQUIT: no draining")
        _add_config_options(parser, ["runtime_dir", "control_socket"])


def _add_db_parsers(commands: argparse._SubParsersAction) -> None:
    database = commands.add_parser("db", help="manage the services database")
    actions = database.add_subparsers(dest="action", metavar="ACTION", required=True)
    sync = actions.add_parser("sync", help="create or upgrade the schema to the newest version")
    _add_config_options(sync, DATABASE_OPTIONS)


def _add_config_options(parser: argparse.ArgumentParser, names: list[str]) -> None:
    parser.add_argument(
        "--config-file",
        action="append",
        default=[],
        metavar="FILE",
        help="INI config file; repeat for more, later ones win",
    )
    for name in names:
        option = _FIELDS[name]
        if option.metadata.get("flag") == "store_true":
            parser.add_argument(
                _flag(name),
                action="store_true",
                default=argparse.SUPPRESS,
                help=option.metadata["help"],
            )
        else:
            parser.add_argument(
                _flag(name),
                default=argparse.SUPPRESS,
                metavar=name.upper(),
                help=_described(option.metadata["help"], name),
            )


def _described(text: str, name: str) -> str:
    """An option's help, with its range when it has one."""
    limits = _FIELDS[name].metadata.get("range")
    return f"{text} (range: {limits})" if limits else text


def _print_help() -> None:
    """The commands, then the options of `run`, the command most people are looking for."""
    parser, commands = build_parsers()
    parser.print_help()
    print()
    commands["run"].print_help()


class _VersionAction(argparse.Action):
    """argparse's "version" action, with the version read only when it is asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any) -> NoReturn:
        print(f"{parser.prog} {supervise.version()}")
        parser.exit()


def _with_implied_run(argv: Sequence[str]) -> list[str]:
    argv = list(argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")
    return argv


def _parse_flags(namespace: argparse.Namespace) -> dict[str, Any]:
    """The options given as flags, parsed with the same rules as files and environment."""
    flags: dict[str, Any] = {}
    for option in config.settable_fields():
        if hasattr(namespace, option.name):
            value = getattr(namespace, option.name)
            flags[option.name] = (
                value
                if isinstance(value, bool)
                else config.parse(option.name, value, _flag(option.name))
            )
    return flags


def _check_encoding(argv: Sequence[str]) -> None:
    """A byte that is not UTF-8 reaches sys.argv as a lone surrogate, which fails wherever
    the text is encoded: in a message, a URL, the database. Every argument is text."""
    for argument in argv:
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"argument {argument!r} is not valid UTF-8") from None


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    _check_encoding(argv)
    parser, commands = build_parsers()
    argv = _with_implied_run(argv)
    if argv[:1] == ["call"]:
        # A subparser's nargs="*" takes no KEY=VALUE after an option (`call topic method
        # --timeout 5 a=1`); `call` has no subcommands of its own, so it parses intermixed.
        namespace = commands["call"].parse_intermixed_args(argv[1:])
        namespace.command = "call"
        return namespace
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if list(argv) in (["-h"], ["--help"]):
            _print_help()
            return exitcodes.OK
        namespace = _parse(argv)
        if namespace.command is None:
            raise UsageError("missing SERVICE (see supervise --help)")
        # Commands are imported on use, so the master's start stays free of kombu and
        # SQLAlchemy (its workers import what their service needs).
        if namespace.command == "call":
            from supervise.rpc import cli_call

            return cli_call.main(namespace, _load_config(namespace))
        if namespace.command == "service":
            from supervise import service_admin

            return service_admin.main(namespace, _load_config(namespace))
        if namespace.command == "db":
            from supervise.db import cli as db_cli

            return db_cli.main(_load_config(namespace))
        if namespace.command in control_client.VERBS:
            return control_client.main(namespace, _load_config(namespace))
        return _run(namespace)
    except (UsageError, ConfigError, hosted.ServiceNotFound, BadTransportURL) as error:
        print(f"supervise: error: {printable(str(error))}", file=sys.stderr)
        return exitcodes.USAGE
    except KeyboardInterrupt:
        return exitcodes.FAILED


def _load_config(namespace: argparse.Namespace) -> config.Config:
    return config.load(_parse_flags(namespace), namespace.config_file)


def _load_run_config(
    policy: worker_policy.WorkerPolicy, service: str, flags: dict[str, Any], files: list[str]
) -> config.Config:
    """The configuration of `run`, at start and at each reload: the service's worker policy
    gives the default worker count and refuses more than its maximum."""
    conf = config.load(flags, files, defaults=policy.defaults())
    policy.check(service, conf.workers)
    return conf


def _make_state_dir(conf: config.Config) -> None:
    """The default queue and database files live in the state directory: create it (private
    to this user) on first start, so that `supervise --workers 4 nova-conductor` needs no
    set-up, and refuse one another user could touch. Files configured elsewhere are the
    operator's to provide."""
    if conf.transport_url and conf.database_url:
        return
    private_files.make_state_directory(conf.state_dir)


def _run(namespace: argparse.Namespace) -> int:
    flags = _parse_flags(namespace)
    service = hosted.resolve(namespace.service)
    policy = worker_policy.of(service)
    load_config = functools.partial(
        _load_run_config, policy, service.name, flags, namespace.config_file
    )
    conf = load_config()
    _make_state_dir(conf)
    try:
        logs.setup(conf.log_level, conf.log_file, conf.log_format)
    except OSError as error:
        raise ConfigError(f"cannot open log file {conf.log_file}: {error.strerror}") from None
    notifier = Notifier.from_environment()
    supervisor = master.Master(conf, service, load_config, notifier, policy)
    try:
        return supervisor.run()
    except Exception:
        LOG.exception("the master failed")
        return exitcodes.FAILED
