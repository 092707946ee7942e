"""`sie-operator store-copy SOURCE TARGET`: copy a config store into an empty one.

SOURCE and TARGET are what ``--store-dir`` takes: a directory (SIE's layout) or
``jetstream://NAME``. Every model is copied as stored, at the epoch of the write that stored
it, then the target is opened afresh and read back to check. Run it with no config service
using either store (a directory is locked by its service; a stream written meanwhile makes
the copy fail).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from sie_operator import natsconn
from sie_operator.cli import UsageError
from sie_operator.natsconn import NatsAuth
from sie_operator.store import ConfigStore, DirectoryStore, FileStore, StoreError
from sie_operator.store.copy import check_copy, copy_store
from sie_operator.store.jetstream import JetStreamStore, parse_location


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="the store to copy: a directory or jetstream://NAME")
    parser.add_argument("target", help="an empty store: a directory or jetstream://NAME")
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("SIE_NATS_URL"),
        help="NATS for a jetstream:// store; a comma list for a cluster [SIE_NATS_URL]",
    )
    natsconn.add_arguments(parser)
    parser.add_argument(
        "--store-replicas",
        default=os.environ.get("SIE_CONFIG_STORE_REPLICAS"),
        help="replicas of a jetstream:// target's stream, 1-5 [SIE_CONFIG_STORE_REPLICAS] (default: "
        "1 for a stream it creates; an existing one is left as it is). The source is never changed",
    )


class _Locations:
    def __init__(self, args: argparse.Namespace) -> None:
        self.nats_url: str | None = args.nats_url
        self.auth = NatsAuth.from_args(args, dict(os.environ))
        self.replicas: int | None = None
        if args.store_replicas not in (None, ""):
            try:
                self.replicas = int(args.store_replicas)
            except ValueError:
                raise UsageError(f"--store-replicas {args.store_replicas!r} is not a number") from None
            if not 1 <= self.replicas <= 5:
                raise UsageError(f"--store-replicas {self.replicas} is not between 1 and 5")

    def store(self, location: str, *, must_exist: bool) -> ConfigStore:
        """``must_exist``: the source (read as it is: never created nor changed)."""
        try:
            stream = parse_location(location)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if stream is not None:
            if not self.nats_url:
                raise UsageError(f"{location} needs --nats-url (or SIE_NATS_URL)")
            return JetStreamStore(
                self.nats_url,
                stream,
                auth=self.auth,
                replicas=self.replicas or 1,
                name="sie-operator-store-copy",
                startup_timeout=10.0,
                create=not must_exist,
                adjust_replicas=not must_exist and self.replicas is not None,
            )
        path = Path(location).expanduser()
        if must_exist and not path.is_dir():
            raise UsageError(f"no store directory at {path}")
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path} is not a directory")
        return DirectoryStore(FileStore(path))


async def _copy(places: _Locations, source_at: str, target_at: str) -> str:
    source = places.store(source_at, must_exist=True)
    target = places.store(target_at, must_exist=False)
    try:
        await source.open()
        await target.open()
        models = await copy_store(source, target)
    finally:
        await target.close()
        await source.close()
    again = places.store(target_at, must_exist=True)
    try:
        await again.open()
        check_copy(models, await again.load_all())
        epoch = again.epoch
    finally:
        await again.close()
    return (
        f"copied {len(models)} model(s) from {source_at} to {target_at} at epoch {epoch}; "
        "read back and checked"
    )


def run(args: argparse.Namespace) -> int:
    try:
        places = _Locations(args)
        if args.source == args.target:
            raise UsageError("source and target are the same store")
        print(asyncio.run(_copy(places, args.source, args.target)))
        return 0
    except UsageError as exc:
        print(f"sie-operator store-copy: error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"sie-operator store-copy: error: {exc}", file=sys.stderr)
        return 1
