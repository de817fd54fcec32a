"""One run at a time per output: a lease object, `_streetblur/lease.json`, that expires.

A run takes the lease before it reads the manifest and gives it back after compacting it; a thread
renews it every third of its time to live. A second run on the same output refuses to start
(`LeaseHeld`, naming the holder and when its lease expires) unless the lease has expired, or its
holder ran on this host and its process is gone (a killed run): then it takes the lease over. A run
that loses its lease (it stalled past the expiry and another run took over) does not compact the
manifest (`LeaseLost`); its parts stay, and the holder's next run compacts them.

Taking, renewing and taking over are compare-and-swap: on S3 conditional writes (`If-None-Match: *`
to create, `If-Match: ETAG` to replace); in a folder a hard link of the written lease (which fails
if one exists), and a rename of the stale file, which only one of two racing runs can win.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from blurring.image_io import write_file_atomically
from jobs.storage import NotFound, Storage

log = logging.getLogger("streetblur.lease")

LEASE_KEY = "_streetblur/lease.json"
LEASE_TTL_S = 120.0
CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict")  # S3's codes for a failed condition


class LeaseHeld(RuntimeError):
    """Another live run holds the output's lease."""


class LeaseLost(RuntimeError):
    """This run's lease expired and another run took it over."""


class Lease:
    """This run's hold on `target`; a context manager that takes, renews and gives back the lease."""

    def __init__(self, target: Storage, run_id: str, ttl_s: float = LEASE_TTL_S) -> None:
        self.target, self.run_id, self.ttl_s = target, run_id, ttl_s
        self.version = ""  # the S3 ETag, or the token of a local lease file, of what this run wrote
        self.lost: str = ""  # why the lease was lost, if it was
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_until_stopped, daemon=True)

    def __enter__(self) -> Lease:
        self.take()
        self._renewer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._renewer.join()
        if not self.lost:
            self.give_back()

    def check(self) -> None:
        """`LeaseLost` if the lease was lost: the run must not write the shared manifest."""
        if self.lost:
            raise LeaseLost(f"run {self.run_id} lost the lease of {self.target.uri}: {self.lost}")

    def take(self) -> None:
        """Take the lease: create it, or take over a stale one; `LeaseHeld` if a live run holds it."""
        for _ in range(3):  # a racing run may change the lease between our read and our write
            if self._write(if_version=None):
                return
            try:
                holder, version = self._read()
            except NotFound:
                continue  # given back meanwhile: try to create it again
            if not _is_stale(holder):
                raise LeaseHeld(
                    f"{self.target.uri} is being written by run {holder['run_id']} (host {holder['host']}, "
                    f"pid {holder['pid']}); its lease expires at {_iso(holder['expires_at'])} unless "
                    "renewed. Wait for it to finish, or write to another output."
                )
            log.warning("taking over the stale lease of run %s", holder["run_id"])
            if self._take_over(version):
                return
        raise LeaseHeld(f"could not take the lease of {self.target.uri}: other runs keep changing it")

    def give_back(self) -> None:
        """Delete the lease if this run still holds it."""
        try:
            _, version = self._read()
        except NotFound:
            return
        if version == self.version:
            self.target.delete(LEASE_KEY)

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self._write(if_version=self.version):
                    self.lost = "another run replaced it"
                    log.error("run %s lost the lease of %s", self.run_id, self.target.uri)
                    return
            except Exception as error:  # noqa: BLE001 -- a passing storage error: try again next time
                log.warning("could not renew the lease: %s", error)

    def _body(self) -> dict:
        return {
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expires_at": time.time() + self.ttl_s,
            "token": uuid.uuid4().hex,
        }

    def _write(self, if_version: str | None) -> bool:
        """Write the lease: create it (`if_version` None) or replace the version this run holds. False
        if the condition fails (it exists; another version is there)."""
        body = self._body()
        data = (json.dumps(body) + "\n").encode()
        if self.target.is_s3:
            from botocore.exceptions import ClientError

            condition = {"IfNoneMatch": "*"} if if_version is None else {"IfMatch": if_version}
            try:
                reply = self.target.client().put_object(
                    Bucket=self.target.bucket, Key=self.target.prefix + LEASE_KEY, Body=data, **condition
                )
            except ClientError as error:
                if error.response["Error"]["Code"] not in CONDITION_FAILED:
                    raise
                # A retry of a write that took effect (its reply was lost) fails its own condition.
                try:
                    holder, version = self._read()
                except NotFound:
                    return False
                if holder["token"] != body["token"]:
                    return False
                self.version = version
                return True
            self.version = reply["ETag"].strip('"')
            return True
        path = self.target.root / LEASE_KEY
        if if_version is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            written = path.with_name(f"lease.new-{body['token']}.json")
            written.write_bytes(data)
            try:  # a hard link is created whole or not at all: no run ever reads a half-written lease
                os.link(written, path)
            except FileExistsError:
                return False
            finally:
                written.unlink()
        else:
            try:
                _, version = self._read()
            except NotFound:
                return False
            if version != if_version:
                return False
            write_file_atomically(path, data)
        self.version = body["token"]
        return True

    def _read(self) -> tuple[dict, str]:
        """The lease's content and version; `NotFound` if there is none."""
        if self.target.is_s3:
            client = self.target.client()
            try:
                reply = client.get_object(Bucket=self.target.bucket, Key=self.target.prefix + LEASE_KEY)
            except client.exceptions.NoSuchKey:
                raise NotFound(LEASE_KEY) from None
            return json.loads(reply["Body"].read()), reply["ETag"].strip('"')
        holder = json.loads(self.target.read(LEASE_KEY))
        return holder, holder["token"]

    def _take_over(self, stale_version: str) -> bool:
        """Replace the stale lease of version `stale_version`; False if another run got there first."""
        if self.target.is_s3:
            return self._write(if_version=stale_version)
        path = self.target.root / LEASE_KEY
        aside = path.with_name(f"lease.stale-{uuid.uuid4().hex}.json")
        try:
            os.rename(path, aside)  # atomic: of two racing runs, only one moves the stale file
        except FileNotFoundError:
            return False
        renewed = json.loads(aside.read_text(encoding="utf-8"))["token"] != stale_version
        if renewed:  # its holder renewed it between our read and our rename: put it back, unless replaced
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
        aside.unlink()
        return not renewed and self._write(if_version=None)


def _is_stale(holder: dict) -> bool:
    """Expired, or held by a process of this host that no longer exists."""
    if holder["expires_at"] < time.time():
        return True
    if holder["host"] != socket.gethostname():
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
