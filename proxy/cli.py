"""The ``cc-sidecar`` command: run, check-config, config-schema, emulator, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from proxy.config import Settings, load_settings
from proxy.errors import ConfigError

DEFAULT_CONFIG_PATH = "config/sidecar.yaml"
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one command; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    code: int = args.handler(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cc-sidecar", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="serve shop traffic")
    _add_config_option(run)
    run.set_defaults(handler=_run)

    check = commands.add_parser("check-config", help="validate the configuration without the network")
    _add_config_option(check)
    check.set_defaults(handler=_check_config)

    schema = commands.add_parser("config-schema", help="print the JSON Schema of the configuration")
    schema.set_defaults(handler=_config_schema)

    reference = commands.add_parser(
        "config-reference", help="print every config key with its default (Markdown)"
    )
    reference.set_defaults(handler=_config_reference)

    emulator = commands.add_parser(
        "emulator",
        help="serve the Storefront API emulator",
        description=(
            "The Customer's Canvas Storefront API emulator, for local development and tests. It prints"
            " the address, the credentials it accepts and a customers_canvas: section for the config."
        ),
    )
    from proxy.emulator import EmulatorOptions  # its defaults are the emulator's own

    defaults = EmulatorOptions()
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    emulator.add_argument(
        "--port", type=int, default=8081, help="port to listen on; 0 for any free one (default: %(default)s)"
    )
    emulator.add_argument(
        "--client-id",
        default=defaults.client_id,
        help="the External App client id it accepts (default: %(default)s)",
    )
    emulator.add_argument(
        "--client-secret",
        default=defaults.client_secret,
        help="the client secret it accepts (default: %(default)s)",
    )
    emulator.add_argument(
        "--tenant-id",
        type=int,
        default=defaults.tenant_id,
        help="the tenant its storefronts belong to (default: %(default)s)",
    )
    emulator.add_argument(
        "--storefront-id",
        type=int,
        action="append",
        dest="storefront_ids",
        metavar="ID",
        help=(
            "a storefront (type Custom) that exists in the tenant; repeat for several"
            f" (default: {', '.join(map(str, defaults.storefront_ids))})"
        ),
    )
    emulator.add_argument(
        "--token-lifetime-s",
        type=int,
        default=defaults.token_lifetime_s,
        help="lifetime of the customer tokens it issues (their exp), in seconds (default: %(default)s)",
    )
    emulator.add_argument("--seed", help="YAML file of storefronts and users to start with (default: none)")
    emulator.add_argument(
        "--enable-control",
        action="store_true",
        help="serve /_emulator/* (call log, fault injection); for tests only",
    )
    emulator.set_defaults(handler=_emulator)

    demo = commands.add_parser("demo", help="emulator + demo shop + sidecar on loopback")
    demo.add_argument("--port", type=int, default=8080, help="the sidecar's port (the URL to open)")
    demo.add_argument(
        "--token-lifetime-s",
        type=int,
        default=3600,
        help="lifetime of the emulator's customer tokens (60 shows a renewal within a minute)",
    )
    demo.set_defaults(handler=_demo)
    return parser


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("CC_SIDECAR_CONFIG", DEFAULT_CONFIG_PATH),
        help=f"YAML file (default: $CC_SIDECAR_CONFIG, else {DEFAULT_CONFIG_PATH})",
    )


def _load_or_report(path: str, *, as_log: bool = False) -> Settings | None:
    """The settings, or None after writing every problem to stderr (as JSON log lines for run)."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        log = logging.getLogger("proxy.config")
        for problem in exc.problems:
            if as_log:
                log.error(problem)
            else:
                print(problem, file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    settings = _load_or_report(args.config)
    if settings is None:
        return EXIT_CONFIG
    for storefront in settings.storefronts:
        selected = ", ".join(storefront.hosts) or (
            f"{storefront.select_header.name}: {storefront.select_header.value}"
            if storefront.select_header
            else "any host"
        )
        identity = [
            name
            for name in ("header", "response_header", "session_check")
            if getattr(storefront.user, name) is not None
        ]
        print(
            f"storefront {storefront.name} (id {storefront.storefront_id}): {selected} -> "
            f"{storefront.upstream}; user: {', '.join(identity) or 'guests only'}; "
            f"editor paths: {len(storefront.editor_paths)}; inject: {', '.join(storefront.inject) or 'none'}"
        )
    cc = settings.customers_canvas
    if cc.tenant_id is None and any(storefront.injects_html for storefront in settings.storefronts):
        print(
            "tenant: customers_canvas.tenant_id is not set; editor pages carry the tenant the API"
            " reports for each storefront (learnt at start-up; tenantId is null until then)"
        )
    redis = settings.token_store.redis
    if settings.token_store.backend == "redis" and redis is not None:
        # Host and port only: the url may carry a password.
        url = urlsplit(redis.url)
        where = f"{url.scheme}://{url.hostname}:{url.port or 6379}"
        if redis.sentinel is not None:
            where = f"master {redis.sentinel.master_name} from {len(redis.sentinel.addresses)} sentinel(s)"
        elif redis.cluster:
            where = f"cluster, seed node {where}"
        print(f"token store: redis, {where}; keys {redis.key_prefix}*; {redis.timeout_s} s per call")
    print(f"access log: {_access_log_summary(settings)}")
    return 0


def _access_log_summary(settings: Settings) -> str:
    if not settings.access_log:
        return "off"
    if settings.log_level not in ("DEBUG", "INFO"):
        return f"off (log_level {settings.log_level} leaves out its INFO lines)"
    from proxy.access_log import FLUSH_BYTES, FLUSH_INTERVAL_S

    batch = f"batched ({FLUSH_BYTES // 1024} KB or {FLUSH_INTERVAL_S:g} s)"
    return f"{settings.access_log_path or 'stderr'}, JSON lines, {batch}"


def _config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(Settings.model_json_schema(), indent=2))
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from proxy.config.reference import markdown_reference

    print(markdown_reference(), end="")
    return 0


def _run(args: argparse.Namespace) -> int:
    from proxy.log import flush_logging, setup_logging

    setup_logging()
    settings = _load_or_report(args.config, as_log=True)
    if settings is None:
        return EXIT_CONFIG
    setup_logging(settings.log_level)
    from proxy.app import event_loop_factory, serve
    from proxy.buffering import check_temp_dir

    try:
        event_loop_factory()
        check_temp_dir(settings.buffering.temp_dir)
    except ConfigError as exc:
        for problem in exc.problems:
            logging.getLogger("proxy.config").error(problem)
        return EXIT_CONFIG
    try:
        return serve(settings)
    except ConfigError as exc:  # what only start-up can find out (the access log's file)
        for problem in exc.problems:
            logging.getLogger("proxy.config").error(problem)
        return EXIT_CONFIG
    finally:
        # The last words ("stopped") queued on the loop; a reader that stalls costs a second.
        flush_logging()


def _emulator(args: argparse.Namespace) -> int:
    from proxy.emulator import run_emulator

    return run_emulator(args)


def _demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    return run_demo(args)
