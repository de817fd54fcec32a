"""One run at a time per output: the lease, on a folder and on S3 (moto), and two real runs at once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jobs.lease import LEASE_KEY, Lease, LeaseHeld, LeaseLost
from jobs.manifest import read_index, read_manifest_rows, uncompacted_runs
from jobs.storage import Storage
from tests.conftest import SAMPLES

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["folder", "s3"])
def target(request, tmp_path) -> Storage:
    if request.param == "folder":
        return Storage(str(tmp_path / "out"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return Storage(f"s3://photos/lease-{tmp_path.name}", endpoint)


def holder(target: Storage) -> dict:
    return json.loads(target.read(LEASE_KEY))


def plant(target: Storage, **fields) -> None:
    """A lease as another run would have left it."""
    lease = {"run_id": "other", "host": "elsewhere", "pid": 1, "expires_at": time.time() + 60, "token": "t0"}
    target.write(LEASE_KEY, json.dumps(lease | fields).encode())


def test_a_second_run_is_refused_while_the_first_holds_the_lease_and_may_start_after(target):
    with Lease(target, "run-a"):
        assert holder(target)["run_id"] == "run-a"
        with pytest.raises(LeaseHeld, match="being written by run run-a"):
            Lease(target, "run-b").take()
        assert holder(target)["run_id"] == "run-a"
    assert not list(target.list())  # given back
    with Lease(target, "run-b"):
        assert holder(target)["run_id"] == "run-b"


@pytest.mark.parametrize(
    ("left_behind", "stale"),
    [
        ({"expires_at": time.time() - 1}, True),  # expired
        ({"host": socket.gethostname(), "pid": 2**22 + 1}, True),  # its process on this host is gone
        ({"host": socket.gethostname()}, False),  # pid 1 of this host: alive
        ({}, False),  # another host, not expired: alive as far as anyone here can tell
    ],
)
def test_a_stale_lease_is_taken_over_and_a_live_one_is_not(target, left_behind, stale):
    plant(target, **left_behind)
    lease = Lease(target, "run-b")
    if stale:
        lease.take()
        assert holder(target)["run_id"] == "run-b"
    else:
        with pytest.raises(LeaseHeld, match="being written by run other"):
            lease.take()
        assert holder(target)["run_id"] == "other"


def test_the_lease_is_renewed_while_the_run_goes_on(target):
    with Lease(target, "run-a", ttl_s=0.6):
        first = holder(target)["expires_at"]
        time.sleep(1.0)  # longer than the lease lives unrenewed
        assert holder(target)["expires_at"] > first
        with pytest.raises(LeaseHeld):
            Lease(target, "run-b").take()


def test_a_run_whose_lease_was_taken_over_knows_it_and_leaves_the_new_holder_alone(target):
    with Lease(target, "run-a", ttl_s=0.6) as lease:
        plant(target, run_id="run-b", token="taken")  # run-b took the lease over (run-a stalled)
        time.sleep(0.5)  # run-a tries to renew
        with pytest.raises(LeaseLost, match="run run-a lost the lease"):
            lease.check()
    assert holder(target)["run_id"] == "run-b"  # not deleted on exit


def test_two_runs_taking_a_folder_lease_at_the_same_instant_never_read_it_half_written(tmp_path):
    """One takes it and the other is refused, every time: the lease file appears whole (the
    exclusive create it replaced let the loser read an empty file about one race in ten)."""
    outcomes = []
    for attempt in range(200):
        target, start = Storage(str(tmp_path / f"out{attempt}")), threading.Barrier(2)

        def take(run_id: str, target: Storage = target, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                Lease(target, run_id).take()
                outcomes.append("took")
            except LeaseHeld:
                outcomes.append("refused")
            except Exception as error:  # noqa: BLE001 -- what the race used to raise
                outcomes.append(repr(error))

        runs = [threading.Thread(target=take, args=(f"run-{n}",)) for n in range(2)]
        for run in runs:
            run.start()
        for run in runs:
            run.join()
        assert sorted(outcomes[-2:]) == ["refused", "took"]
        assert [p.name for p in (target.root / LEASE_KEY).parent.iterdir()] == ["lease.json"]  # no temp files


def test_two_runs_started_at_once_on_one_output_one_refuses_and_the_other_finishes(tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for name in ("crowd_0.jpg", "dashcam_0.jpg"):
        (source / name).write_bytes((SAMPLES / name).read_bytes())
    command = [sys.executable, "-m", "jobs.cli", "run", "--input", str(source), "--output", str(output)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    runs = [subprocess.Popen(command, cwd=REPO, **pipes) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    results = sorted((run.returncode, *output) for run, output in zip(runs, outputs, strict=True))
    (finished, summary, _), (refused, _, why) = results
    assert (finished, refused) == (0, 75)
    assert "is being written by run" in why and "Wait for it to finish" in why
    assert json.loads(summary)["blurred"] == 2
    target = Storage(str(output))
    assert [r["key"] for r in read_manifest_rows(target)] == ["crowd_0.jpg", "dashcam_0.jpg"]
    assert read_index(target)["runs"] == [json.loads(summary)["run_id"]]  # the refused run left no trace
    assert not uncompacted_runs(target, read_index(target))
    assert not (output / LEASE_KEY).exists()
