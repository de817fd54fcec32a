"""Ray start-up, and pools of actors that load a model once each: for the batch job and `streetblur
eval --ray`.

Detector actors load the models once each and then take batches of rows; read and write tasks
beside them get a fraction of a CPU (`IO_CPUS`), so that on a small machine the actors do not
starve them (`pool_size` leaves each actor that room).
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

ACTOR_CPUS = 0.75  # CPUs reserved per detector actor: below 1 on purpose, room for read/write tasks
IO_CPUS = 0.25  # CPUs per read/write task
BATCH_SIZE = 4  # images per actor call


def start_ray(address: str | None, verbose: bool = True) -> None:
    """Connect to the Ray cluster at `address` (None: `RAY_ADDRESS`, else start a new local Ray).

    A new local Ray, not "whatever cluster this machine last started": that one may be gone. Not
    `verbose`: Ray's progress blocks and info logs, Ray Data's warnings, the lines of Ray's C++ core in
    this driver (`quiet_ray_core`) and its notice that a new local Ray turns token authentication on
    are kept off this driver's console (Ray's other warnings stay). Ray still writes all but that
    notice to its log folder (`/tmp/ray/session_latest/logs` on a local Ray).
    """
    import logging

    import ray
    import ray.data

    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # A local Ray runs this job alone: no dashboard, whose processes would take CPU from the actors.
    local = {"include_dashboard": False} if address == "local" else {}
    level = logging.INFO if verbose else logging.WARNING
    if not verbose:
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level=level, **local)
    if not verbose:
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its warnings stay in ray-data.log
        quiet_ray_core()


# A line of Ray's C++ core: "[2026-12-07 04:32:58,956 E 8505 8505] core_worker.cc:2465: ..."
RAY_CORE_LINE = re.compile(rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWE] \d+ \d+\] ")
_quiet: dict = {}  # the running filter of `quiet_ray_core`: its pipe and thread, and the console's fd


def quiet_ray_core() -> None:
    """Keep the lines of Ray's C++ core off this process's stderr from now on, the rest as it was.

    Ray's core in a driver writes its warnings and errors both to its log file (`python-core-driver-*.log`
    in Ray's log folder) and to stderr, where they mean nothing to a user of this program: "Actor ...
    has constructor arguments in the object store and max_restarts > 0", for each actor pool Ray Data
    starts. Ray has no option for it, so file descriptor 2 becomes a pipe read by a thread that passes
    on all else to the console as it comes (Ray's fatal errors too); a partial line is held only if
    it may start such a line (it starts with "["), so progress bars redrawn with "\\r" still show. At
    exit, after Ray's own shutdown, stderr is the console again and the thread drains the pipe. A
    no-op while the filter runs, or where there is no stderr."""
    if _quiet and _is_fd2(_quiet["pipe"]):
        return
    sys.stderr.flush()
    try:
        console = os.dup(2)
    except OSError:  # no stderr: nothing to keep quiet
        return
    if not _quiet:
        atexit.register(_stop_quiet)  # Ray registered its shutdown on init: this one runs after it
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    thread = threading.Thread(target=_pass_on, args=(read, console), name="quiet-ray-core", daemon=True)
    thread.start()
    _quiet.update(pipe=os.fstat(2), console=console, thread=thread)


def _is_fd2(status: os.stat_result) -> bool:
    """True if file descriptor 2 is the file of `status`."""
    current = os.fstat(2)
    return (current.st_dev, current.st_ino) == (status.st_dev, status.st_ino)


def _pass_on(read: int, console: int | None) -> None:
    """Copy what arrives on `read` to `console`, but for Ray's core lines (`RAY_CORE_LINE`). Once the
    console cannot be written to (a closed pipe), drain `read` all the same: writers never block."""
    held = b""
    while chunk := os.read(read, 1 << 16):
        *lines, held = (held + chunk).split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not RAY_CORE_LINE.match(line))
        if not held.startswith(b"["):
            out, held = out + held, b""
        console = _write_all(console, out)
    if not RAY_CORE_LINE.match(held):
        _write_all(console, held)
    os.close(read)


def _write_all(fd: int | None, data: bytes) -> int | None:
    """Write all of `data` to `fd`; `fd`, or None once it fails (and for None)."""
    try:
        while data and fd is not None:
            data = data[os.write(fd, data) :]
    except OSError:
        return None
    return fd


def _stop_quiet() -> None:
    """At exit: stderr is the console again, and what the pipe still holds reaches it."""
    if not _is_fd2(_quiet["pipe"]):
        return
    sys.stderr.flush()
    os.dup2(_quiet["console"], 2)  # closes the pipe's last write end: the thread drains it and ends
    _quiet["thread"].join(timeout=2)


def pool_size(actor_cpus: float, actor_gpus: float, io_cpus: float = IO_CPUS, memory_gb: float = 0.0) -> int:
    """Detector actors that fit the connected cluster now, leaving each room for a read or write task,
    each with `memory_gb` of Ray's memory resource."""
    import ray

    resources = ray.cluster_resources()
    if actor_gpus > 0:
        fit = int(resources.get("GPU", 0) / actor_gpus)
    else:
        fit = int(resources.get("CPU", 1) / (actor_cpus + io_cpus))
    if memory_gb > 0:
        fit = min(fit, int(resources.get("memory", 0) / (memory_gb * 2**30)))
    return max(1, fit)


def with_actor_pool(
    dataset,
    actor: type,
    constructor_kwargs: dict,
    actors: int | None,
    batch_size: int,
    actor_cpus: float,
    actor_gpus: float,
    io_cpus: float = IO_CPUS,
    memory_gb: float = 0.0,
):
    """`dataset` mapped in batches by a pool of `actors` instances of `actor`, each built once and
    reserving `memory_gb` of Ray's memory resource (0: none), so that Ray places no more actors on a
    node than its memory holds.

    `actors` None: as many as fit the cluster now (`pool_size`), growing as the cluster grows. Ray Data
    restarts a dead actor and retries its batch (`max_restarts=-1` by default).
    """
    import ray

    if actors:
        pool = ray.data.ActorPoolStrategy(size=actors)
    else:
        fit = pool_size(actor_cpus, actor_gpus, io_cpus, memory_gb)
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=None, initial_size=fit)
    return dataset.map_batches(
        actor,
        fn_constructor_kwargs=constructor_kwargs,
        compute=pool,
        batch_size=batch_size,
        num_cpus=actor_cpus,
        num_gpus=actor_gpus,
        **({"memory": memory_gb * 2**30} if memory_gb > 0 else {}),
    )
