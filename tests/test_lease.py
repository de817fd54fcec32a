"""One run at a time per output: the lease, on a folder and on S3 (moto), and two real runs at once; a run
paused past its lease's expiry, racing renewals and take-overs, and a retry on another host."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jobs.batch.lease import LEASE_KEY, Lease, LeaseHeld, LeaseLost
from jobs.batch.manifest import INDEX_KEY, compact, read_index, read_manifest_rows, uncompacted_runs
from storage.objects import NotFound, Storage
from tests.conftest import SAMPLES
from tests.test_manifest import write_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["folder", "s3"])
def target(request, tmp_path) -> Storage:
    if request.param == "folder":
        return Storage(str(tmp_path / "out"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return Storage(f"s3://photos/lease-{tmp_path.name}", endpoint)


def holder(target: Storage) -> dict:
    return json.loads(target.read(LEASE_KEY))


def lease_folder(target: Storage) -> list[str]:
    return sorted(p.name for p in (target.root / LEASE_KEY).parent.iterdir())


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
    with pytest.raises(NotFound):  # given back
        target.read(LEASE_KEY)
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
    lease = Lease(target, "run-b", wait_s=0)
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
        assert lease.lost
        with pytest.raises(LeaseLost, match="run run-a lost the lease"):
            lease.verify()
    assert holder(target)["run_id"] == "run-b"  # not deleted on exit


def generations(target: Storage) -> set[str]:
    return {o.key.split("/")[2] for o in target.list(under="_streetblur/manifest/")}


def test_a_run_paused_past_its_expiry_whose_lease_was_taken_over_compacts_nothing(target):
    """Its renewer never ran (SIGSTOP, a GC pause), so no flag says the lease is lost: the renewal before
    the compaction finds the other run's lease, and the state the other run is reading stays."""
    write_run(target, "20260101T000000Z-aaaaaa", ["a.jpg"], block_rows=1)
    compact(target, read_index(target), ["20260101T000000Z-aaaaaa"])
    paused = Lease(target, "20260102T000000Z-pausdd", ttl_s=0.3)
    paused.take()  # and no renewer thread runs
    index = read_index(target)
    write_run(target, "20260102T000000Z-pausdd", ["b.jpg"], block_rows=1)
    time.sleep(0.5)
    other = Lease(target, "20260102T000001Z-othrrr", wait_s=0)
    other.take()  # the paused run's lease expired: taken over
    index_read_by_other = read_index(target)
    switched = target.read(INDEX_KEY)

    with pytest.raises(LeaseLost, match="lost the lease"):
        compact(target, index, ["20260102T000000Z-pausdd"], paused)
    assert target.read(INDEX_KEY) == switched  # not switched
    assert generations(target) == {index_read_by_other["generation"]}  # nothing deleted, nothing written
    for part in index_read_by_other["parts"]:
        target.read(part["key"])
    assert holder(target)["run_id"] == "20260102T000001Z-othrrr"

    write_run(target, "20260102T000001Z-othrrr", ["c.jpg"], block_rows=1)
    after = compact(target, index_read_by_other, ["20260102T000001Z-othrrr"], other)
    assert after["runs"] == ["20260101T000000Z-aaaaaa", "20260102T000001Z-othrrr"]
    assert uncompacted_runs(target, after) == ["20260102T000000Z-pausdd"]  # for the next run to compact
    assert [r["key"] for r in read_manifest_rows(target)] == ["a.jpg", "b.jpg", "c.jpg"]


def test_a_run_whose_lease_expired_unnoticed_but_was_not_taken_over_goes_on(target):
    """No other run can have started meanwhile: its conditional renewal succeeds, and it compacts."""
    lease = Lease(target, "20260101T000000Z-aaaaaa", ttl_s=0.3)
    lease.take()
    write_run(target, "20260101T000000Z-aaaaaa", ["a.jpg"], block_rows=1)
    time.sleep(0.5)
    index = compact(target, read_index(target), ["20260101T000000Z-aaaaaa"], lease)
    assert index["runs"] == ["20260101T000000Z-aaaaaa"]
    assert holder(target)["run_id"] == "20260101T000000Z-aaaaaa"
    assert holder(target)["expires_at"] > time.time()  # renewed


def test_a_renewal_racing_two_take_overs_of_a_folder_lease_has_one_winner(tmp_path):
    """A run renews its expired lease while two others take it over, at the same instant: exactly one
    of the three holds it, and the lease is that one's (read-then-replace renewal let two win)."""

    def renew(lease: Lease, start: threading.Barrier, won: list[str]) -> None:
        start.wait()
        try:
            lease.verify()
            won.append(lease.run_id)
        except LeaseLost:
            pass

    def take_over(lease: Lease, start: threading.Barrier, won: list[str]) -> None:
        start.wait()
        try:
            lease.take()
            won.append(lease.run_id)
        except LeaseHeld:
            pass

    for attempt in range(100):
        target, start, won = Storage(str(tmp_path / f"out{attempt}")), threading.Barrier(3), []
        renewing = Lease(target, "run-a", ttl_s=0.02)
        renewing.take()
        time.sleep(0.03)  # expired: the others may take it over
        renewing.ttl_s = 60.0  # its renewal is not
        runs = [threading.Thread(target=renew, args=(renewing, start, won))]
        runs += [
            threading.Thread(target=take_over, args=(Lease(target, f"run-{n}", wait_s=0), start, won))
            for n in "bc"
        ]
        for run in runs:
            run.start()
        for run in runs:
            run.join()
        assert won == [holder(target)["run_id"]], f"attempt {attempt}"
        assert lease_folder(target) == [".lease.json.lock", "lease.json"]  # no temp files


def test_a_retry_on_another_host_waits_for_the_dead_runs_lease_to_expire_then_takes_it_over(target):
    """A KubeRay retry on a new pod: the first try's lease names another host, so no process can be
    checked; it is not renewed, so the retry takes it over once expired instead of exiting 75."""
    plant(target, expires_at=time.time() + 0.6)
    start = time.monotonic()
    Lease(target, "retry", ttl_s=0.6, wait_s=3).take()
    assert 0.5 < time.monotonic() - start < 2.5
    assert holder(target)["run_id"] == "retry"


def test_a_live_run_on_another_host_is_not_waited_out_and_a_lease_given_back_is_taken(target):
    stop = threading.Event()

    def renew_elsewhere() -> None:  # a live run on another host renews its lease
        while not stop.wait(0.1):
            plant(target, token=str(time.monotonic()), expires_at=time.time() + 0.6)

    plant(target, expires_at=time.time() + 0.6)
    renewer = threading.Thread(target=renew_elsewhere)
    renewer.start()
    start = time.monotonic()
    try:
        with pytest.raises(LeaseHeld, match="being written by run other"):
            Lease(target, "second", ttl_s=0.6, wait_s=30).take()
    finally:
        stop.set()
        renewer.join()
    assert time.monotonic() - start < 2  # refused at its holder's first renewal, not at wait_s

    plant(target, expires_at=time.time() + 60)
    threading.Timer(0.3, target.delete, args=(LEASE_KEY,)).start()  # the other run finishes
    Lease(target, "next", ttl_s=0.6, wait_s=30).take()
    assert holder(target)["run_id"] == "next"


def test_a_conditional_write_whose_reply_was_lost_is_recognised_by_its_retry(s3_endpoint, tmp_path):
    """S3: the retry of a write that took effect fails its own condition; its bytes show it is ours."""
    target = Storage(f"s3://photos/retried-{tmp_path.name}", s3_endpoint)
    first = target.write_if("x.json", b'{"token": "1"}', None)
    assert target.write_if("x.json", b'{"token": "1"}', None) == first  # as a retry sends it
    second = target.write_if("x.json", b'{"token": "2"}', first)
    assert target.write_if("x.json", b'{"token": "2"}', first) == second
    assert target.read_versioned("x.json") == (b'{"token": "2"}', second)


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
        assert lease_folder(target) == [".lease.json.lock", "lease.json"]  # no temp files


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
