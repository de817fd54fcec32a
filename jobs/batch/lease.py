"""One run at a time per output: a lease object, `_streetblur/lease.json`, that expires.

A run takes the lease before it reads the manifest and gives it back after compacting it; a thread
renews it every third of its time to live. A second run on the same output refuses to start
(`LeaseHeld`, naming the holder and when its lease expires) unless the lease has expired, or its
holder ran on this host and its process is gone (a killed run): then it takes the lease over. The
lease of a run on another host that is not expired yet is waited on, up to `wait_s` (by default just
past its time to live): a live run renews it (`LeaseHeld` at once), a dead one does not (taken over
once expired). So a retry of a job on a new host (KubeRay, `ray job submit`) takes over the lease its
dead first try left, instead of failing.

A thread's renewals are not enough to fence off a run: one paused past the expiry (SIGSTOP, a long GC
pause, a suspended VM) resumes before its renewer notices. So before each write only the holder may do
(`jobs.batch.manifest.compact`), the run renews the lease itself (`verify`): `LeaseLost` if another run took
it over. A run whose lease expired while nobody took it over still holds it: its renewal succeeds and
it goes on (no other run can have started on the output meanwhile). A run that loses its lease does not
compact the manifest; its parts stay, and the holder's next run compacts them.

Taking, renewing, taking over and giving back are compare-and-swap (`Storage.write_if`/`delete_if`):
on S3 conditional requests (`If-None-Match: *` to create, `If-Match: ETAG` to replace or delete); in a
folder a check and an atomic replace under an exclusive lock of `_streetblur/.lease.json.lock`, so of
racing runs exactly one wins, and no run ever reads a half-written lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from storage.objects import ConditionFailed, NotFound, Storage

log = logging.getLogger("streetblur.lease")

LEASE_KEY = "_streetblur/lease.json"
LEASE_TTL_S = 120.0
# How long `take` waits on the unexpired lease of another host: a dead run's lease expires within its
# time to live; 30 s more for the polling and clocks that differ between hosts.
LEASE_WAIT_S = LEASE_TTL_S + 30.0
TAKE_RACES = 3  # lost races with other runs taking the lease before `take` gives up


class LeaseHeld(RuntimeError):
    """Another live run holds the output's lease."""


class LeaseLost(RuntimeError):
    """This run's lease expired and another run took it over."""


class Lease:
    """This run's hold on `target`; a context manager that takes, renews and gives back the lease."""

    def __init__(
        self, target: Storage, run_id: str, ttl_s: float = LEASE_TTL_S, wait_s: float = LEASE_WAIT_S
    ) -> None:
        self.target, self.run_id, self.ttl_s, self.wait_s = target, run_id, ttl_s, wait_s
        self.version = ""  # the version (`Storage.read_versioned`) of the lease this run last wrote
        self.lost: str = ""  # why the lease was lost, if it was
        self._renewing = threading.Lock()  # the renewer thread and `verify` renew in turn
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

    def verify(self) -> None:
        """Renew the lease now with a conditional write: `LeaseLost` if another run took it over. Call it
        right before each write only the holder may do; storage errors propagate (unverified)."""
        self._renew()
        if self.lost:
            raise LeaseLost(f"run {self.run_id} lost the lease of {self.target.uri}: {self.lost}")

    def take(self) -> None:
        """Take the lease: create it, or take over a stale one; wait up to `wait_s` on the unexpired
        lease of another host; `LeaseHeld` if a live run holds it."""
        deadline = time.monotonic() + self.wait_s
        seen, races = None, 0  # the version of the other run's lease last read; races lost
        while races < TAKE_RACES:
            try:
                self.version = self.target.write_if(LEASE_KEY, self._body(), None)
                return
            except ConditionFailed:
                pass
            try:
                holder, version = self._read()
            except NotFound:  # given back meanwhile: try to create it again
                races += 1
                continue
            if _is_stale(holder):
                log.warning("taking over the stale lease of run %s", holder["run_id"])
                try:
                    self.version = self.target.write_if(LEASE_KEY, self._body(), version)
                    return
                except ConditionFailed:  # another run took it over first, or its holder renewed it
                    seen, races = version, races + 1
                    continue
            renewed = seen is not None and version != seen
            if renewed or holder["host"] == socket.gethostname() or time.monotonic() >= deadline:
                raise LeaseHeld(
                    f"{self.target.uri} is being written by run {holder['run_id']} (host {holder['host']}, "
                    f"pid {holder['pid']}); its lease expires at {_iso(holder['expires_at'])} unless "
                    "renewed. Wait for it to finish, or write to another output."
                )
            if seen is None:
                log.warning(
                    "run %s (host %s) holds the lease of %s: waiting up to %.0f s for it to be renewed "
                    "(a live run) or to expire (a dead one)",
                    holder["run_id"],
                    holder["host"],
                    self.target.uri,
                    self.wait_s,
                )
            seen = version
            time.sleep(max(0.0, min(self.ttl_s / 12, deadline - time.monotonic())))
        raise LeaseHeld(f"could not take the lease of {self.target.uri}: other runs keep changing it")

    def give_back(self) -> None:
        """Delete the lease if this run still holds it."""
        with contextlib.suppress(ConditionFailed):
            self.target.delete_if(LEASE_KEY, self.version)

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.ttl_s / 3) and not self.lost:
            try:
                self._renew()
            except Exception as error:  # noqa: BLE001 -- a passing storage error: try again next time
                log.warning("could not renew the lease: %s", error)

    def _renew(self) -> None:
        """Replace the lease this run wrote last with a later expiry; set `lost` if another run's is
        there instead."""
        with self._renewing:
            if self.lost:
                return
            try:
                self.version = self.target.write_if(LEASE_KEY, self._body(), self.version)
            except ConditionFailed:
                self.lost = "another run took it over"
                log.error("run %s lost the lease of %s", self.run_id, self.target.uri)

    def _body(self) -> bytes:
        """A new lease of this run; its token makes every lease written unique."""
        body = {
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expires_at": time.time() + self.ttl_s,
            "token": uuid.uuid4().hex,
        }
        return (json.dumps(body) + "\n").encode()

    def _read(self) -> tuple[dict, str]:
        """The lease's content and version; `NotFound` if there is none."""
        data, version = self.target.read_versioned(LEASE_KEY)
        return json.loads(data), version


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
