"""python -m fieldsync_client [--data DIR] COMMAND …: a phone on the command line.

  init --server URL --username U --password P   sign in; this directory becomes one device
  login --password P                            sign in again after a refused token
  status                                        ops, uploads, conflicts, network at a glance
  records [ENTITY]                              the local view (server state + unsent edits)
  set ENTITY ID FIELD=VALUE…                    change fields (VALUE is JSON, else a string)
  create ENTITY FIELD=VALUE…                    create a record (prints its id)
  delete ENTITY ID
  comment WORK_ORDER_ID TEXT
  attach WORK_ORDER_ID PATH [--kind K] [--note N] [--job J]
  uploads [--job J]                             every file, its state and progress
  pause [ATTACHMENT_ID] / resume [ATTACHMENT_ID] / retry ATTACHMENT_ID
  network wifi|cellular|offline                 what the OS says (videos wait for wifi)
  conflicts / resolve CONFLICT_ID mine|server|custom [--value JSON]
  ops [--status S]                              the op queue
  log [--limit N]                               the latest state changes
  sync                                          one sync round now
  run [--until-idle] [--timeout S]              sync and upload in the foreground

Every state change is logged on stderr by `run` and kept in the store (`log`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from fieldsync_client.backoff import Backoff
from fieldsync_client.client import Client, Settings
from fieldsync_client.model import Json, Network
from fieldsync_client.transport import Refused, TransportError
from fieldsync_client.uploads import MiB, UploadPolicy


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.command in ("run", "sync") else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    data = Path(args.data)
    settings = Settings(
        backoff=Backoff(base=args.backoff_base),
        upload=UploadPolicy(
            chunk_size=int(args.chunk_mib * MiB), videos_on_wifi_only=not args.videos_on_cellular
        ),
        sync_interval=args.sync_interval,
    )
    try:
        return COMMANDS[args.command](data, settings, args)
    except (TransportError, Refused) as exc:
        print(f"fieldsync: {exc}", file=sys.stderr)
        return 3
    except (KeyError, ValueError, RuntimeError) as exc:
        print(f"fieldsync: {exc}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m fieldsync_client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--data", default=os.environ.get("FIELDSYNC_DATA", "fieldsync-data"))
    top.add_argument("--backoff-base", type=float, default=15.0, help="first retry delay, s")
    top.add_argument("--chunk-mib", type=float, default=4.0, help="upload chunk size, MiB")
    top.add_argument("--sync-interval", type=float, default=30.0, help="pull at least every S")
    top.add_argument("--videos-on-cellular", action="store_true", help="don't hold videos")
    sub = top.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init")
    init.add_argument("--server", required=True)
    init.add_argument("--username", required=True)
    init.add_argument("--password", required=True)
    init.add_argument("--device-id")
    sub.add_parser("login").add_argument("--password", required=True)
    sub.add_parser("status")
    sub.add_parser("records").add_argument("entity", nargs="?")
    for name in ("set", "delete"):
        command = sub.add_parser(name)
        command.add_argument("entity")
        command.add_argument("entity_id")
        if name == "set":
            command.add_argument("assignments", nargs="+", metavar="FIELD=VALUE")
    create = sub.add_parser("create")
    create.add_argument("entity")
    create.add_argument("assignments", nargs="+", metavar="FIELD=VALUE")
    comment = sub.add_parser("comment")
    comment.add_argument("work_order_id")
    comment.add_argument("text")
    attach = sub.add_parser("attach")
    attach.add_argument("work_order_id")
    attach.add_argument("path", type=Path)
    attach.add_argument("--kind", choices=("photo", "video", "signature", "document"))
    attach.add_argument("--note", default="")
    attach.add_argument("--job")
    sub.add_parser("uploads").add_argument("--job")
    for name in ("pause", "resume"):
        sub.add_parser(name).add_argument("attachment_id", nargs="?")
    sub.add_parser("retry").add_argument("attachment_id")
    sub.add_parser("network").add_argument("network", choices=[n.value for n in Network])
    sub.add_parser("conflicts").add_argument("--all", action="store_true")
    resolve = sub.add_parser("resolve")
    resolve.add_argument("conflict_id")
    resolve.add_argument("choice", choices=("mine", "server", "custom"))
    resolve.add_argument("--value", type=json.loads)
    sub.add_parser("ops").add_argument("--status")
    sub.add_parser("log").add_argument("--limit", type=int, default=50)
    sub.add_parser("sync")
    run = sub.add_parser("run")
    run.add_argument("--until-idle", action="store_true")
    run.add_argument("--timeout", type=float)
    return top


def _assignments(pairs: list[str]) -> dict[str, Json]:
    fields: dict[str, Json] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r} is not FIELD=VALUE")
        try:
            fields[name] = json.loads(raw)
        except ValueError:
            fields[name] = raw
    return fields


def _show(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_init(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    client = Client.setup(
        data, args.server, args.username, args.password, device_id=args.device_id, settings=settings
    )
    print(client.store.device_id)
    return 0


def cmd_login(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    Client(data, settings).login(args.password)
    return 0


def cmd_status(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    _show(Client(data, settings).status())
    return 0


def cmd_records(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    _show(Client(data, settings).records(args.entity))
    return 0


def cmd_set(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    print(
        Client(data, settings).update(args.entity, args.entity_id, **_assignments(args.assignments))
    )
    return 0


def cmd_create(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    print(Client(data, settings).create(args.entity, _assignments(args.assignments)))
    return 0


def cmd_delete(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    print(Client(data, settings).delete(args.entity, args.entity_id))
    return 0


def cmd_comment(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    print(Client(data, settings).comment(args.work_order_id, args.text))
    return 0


def cmd_attach(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    client = Client(data, settings)
    print(
        client.attach(args.work_order_id, args.path, kind=args.kind, note=args.note, job=args.job)
    )
    return 0


def cmd_uploads(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    client = Client(data, settings)
    progress = client.progress(args.job)
    print(f"{progress.text}: {progress.bytes_confirmed} of {progress.bytes_total} bytes confirmed")
    for item in client.store.uploads(args.job):
        state = item["status"] + (f"({item['reason']})" if item["reason"] else "")
        percent = 100 * item["offset"] // max(1, item["size"])
        error = f"  {item['last_error']}" if item["last_error"] else ""
        print(f"{item['attachment_id']}  {state:<28} {percent:>3}%  {item['filename']}{error}")
    return 0


def cmd_pause(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    Client(data, settings).pause_uploads(args.attachment_id, paused=args.command == "pause")
    return 0


def cmd_retry(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    print(Client(data, settings).retry_upload(args.attachment_id))
    return 0


def cmd_network(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    Client(data, settings).set_network(Network(args.network))
    return 0


def cmd_conflicts(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    _show(Client(data, settings).conflicts(None if args.all else "open"))
    return 0


def cmd_resolve(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    Client(data, settings).resolve(args.conflict_id, args.choice, args.value)
    return 0


def cmd_ops(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    client = Client(data, settings)
    rows = client.store.ops((args.status,) if args.status else None)
    _show([dict(row) for row in rows])
    return 0


def cmd_log(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    for row in Client(data, settings).store.log_rows(args.limit):
        detail = f"  ({row['detail']})" if row["detail"] else ""
        change = f"{row['old']} -> {row['new']}"
        print(f"{row['at']} {row['subject']} {row['subject_id']}: {change}{detail}")
    return 0


def cmd_sync(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    report = Client(data, settings).sync_once()
    _show(report.__dict__)
    return 0


def cmd_run(data: Path, settings: Settings, args: argparse.Namespace) -> int:
    client = Client(data, settings)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.timeout:
        timer = threading.Timer(args.timeout, stop.set)
        timer.daemon = True
        timer.start()
    client.run(stop, until_idle=args.until_idle)
    idle = client.is_idle()
    _show(client.status())
    stop.set()
    return 0 if idle or not args.until_idle else 1


COMMANDS = {
    "init": cmd_init,
    "login": cmd_login,
    "status": cmd_status,
    "records": cmd_records,
    "set": cmd_set,
    "create": cmd_create,
    "delete": cmd_delete,
    "comment": cmd_comment,
    "attach": cmd_attach,
    "uploads": cmd_uploads,
    "pause": cmd_pause,
    "resume": cmd_pause,
    "retry": cmd_retry,
    "network": cmd_network,
    "conflicts": cmd_conflicts,
    "resolve": cmd_resolve,
    "ops": cmd_ops,
    "log": cmd_log,
    "sync": cmd_sync,
    "run": cmd_run,
}


def run_cli() -> None:
    """Entry point of the `fieldsync-client` script."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run_cli()
