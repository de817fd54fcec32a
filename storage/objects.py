"""Where images are read from and written to: a local folder or `s3://bucket/prefix`.

S3 goes through boto3: endpoint, region and credentials come from the standard AWS environment
and config files (so an instance role, `AWS_PROFILE` or MinIO keys all work), plus an optional
`endpoint_url` for S3-compatible servers. Every call is tried up to 8 times in botocore's `standard` retry
mode (backoff, throttling errors included); a read whose body is cut midway is tried again too.
A `Storage` holds only its URI and endpoint, so it pickles cheaply into Ray tasks; each process
makes its own client on first use and keeps it.

`read_versioned`, `write_if` and `delete_if` are compare-and-swap on one object, for what one run at a
time may change (the batch job's lease and manifest): on S3 conditional requests (`If-Match`,
`If-None-Match: *`); in a folder a check and an atomic replace under an exclusive lock (`_locked`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from storage.files import copy_file_atomically, write_file_atomically


@dataclass(frozen=True)
class StoredObject:
    """A listed object: its key relative to the storage root, size in bytes and ETag; `error` says why
    it cannot be read by its key (it becomes a failed row with that reason)."""

    key: str
    size: int
    etag: str
    error: str = ""


def printable_key(raw: str) -> tuple[str, str]:
    """`(key, error)` for a file name or keys-file line decoded with `surrogateescape`: the key itself
    and no error when it is valid UTF-8; else the key with its undecodable bytes written as `\\xNN`
    (storable in the manifest, but naming no file) and the reason."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        key = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return key, "invalid key: not valid UTF-8 (undecodable bytes shown as \\xNN); rename it"
    return raw, ""


_S3_CLIENTS: dict[str | None, object] = {}  # one client per endpoint, per process
DOWNLOAD_ATTEMPTS = 4  # reads whose body is cut midway are tried again (botocore retries only the call)
# S3's codes for a failed condition: another version (412), a racing conditional write (409), no object
# for `If-Match` (404)
CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey")
LOCK_WAIT_S = 30.0  # a folder's conditional write waits this long for another writer's lock


class NotFound(Exception):
    """The object does not exist."""


class ConditionFailed(Exception):
    """A conditional write or delete found another version of the object, or none, or one."""


class InvalidKey(ValueError):
    """A key that could name something outside the storage root, or differ between S3 and a folder."""


def check_key(key: str) -> str:
    """`key` if it is a safe relative key, else `InvalidKey`: empty, absolute (`/a`), or with an empty,
    `.` or `..` segment (`a//b`, `./a`, `../a`, `a/`), which could name something outside the root or
    name one object on S3 and another in a folder. `Storage` checks the key of every read, stat and
    write, whether it came from a listing or a keys file.
    """
    if not key:
        raise InvalidKey("invalid key: empty")
    if key.startswith("/"):
        raise InvalidKey(f"invalid key {key!r}: absolute")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKey(f"invalid key {key!r}: empty, '.' or '..' segment")
    return key


@dataclass(frozen=True)
class Storage:
    """A local folder or an S3 prefix, addressed by keys relative to it."""

    uri: str
    endpoint_url: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def bucket(self) -> str:
        return urlparse(self.uri).netloc

    @property
    def prefix(self) -> str:
        """The key prefix inside the bucket, empty or ending in '/'."""
        path = urlparse(self.uri).path.strip("/")
        return f"{path}/" if path else ""

    @property
    def root(self) -> Path:
        return Path(self.uri)

    def client(self):
        """This process's boto3 S3 client for the endpoint (retries in botocore's standard mode)."""
        if self.endpoint_url not in _S3_CLIENTS:
            import boto3
            from botocore.config import Config

            config = Config(retries={"mode": "standard", "total_max_attempts": 8}, max_pool_connections=32)
            _S3_CLIENTS[self.endpoint_url] = boto3.client("s3", endpoint_url=self.endpoint_url, config=config)
        return _S3_CLIENTS[self.endpoint_url]

    def list(self, suffixes: tuple[str, ...] = (), under: str = "") -> Iterator[StoredObject]:
        """Every object under `under` whose key ends in one of `suffixes` (any case), streamed in key
        order (code point order, which is S3's UTF-8 byte order) and paginated on S3."""

        def wanted(key: str) -> bool:
            return not suffixes or key.lower().endswith(suffixes)

        if self.is_s3:
            pages = (
                self.client()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=self.bucket, Prefix=self.prefix + under)
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    if wanted(key) and not key.endswith("/"):
                        yield StoredObject(key, item["Size"], item["ETag"].strip('"'))
            return
        for path in _walk_in_key_order(self.root / under):
            key, error = printable_key(path.relative_to(self.root).as_posix())
            if wanted(key):
                stat = path.stat()
                yield StoredObject(key, stat.st_size, f"{stat.st_mtime_ns:x}-{stat.st_size:x}", error)

    def folders(self, under: str) -> list[str]:
        """The names of the "folders" right under `under` (S3: common prefixes), sorted."""
        if self.is_s3:
            pages = (
                self.client()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=self.bucket, Prefix=self.prefix + under, Delimiter="/")
            )
            start = len(self.prefix + under)
            prefixes = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
            return sorted(p[start:].rstrip("/") for p in prefixes)
        base = self.root / under
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def stat(self, key: str) -> StoredObject:
        """Size and ETag of one object; `NotFound` if it does not exist, `InvalidKey` for an unsafe key."""
        check_key(key)
        if self.is_s3:
            from botocore.exceptions import ClientError

            try:
                head = self.client().head_object(Bucket=self.bucket, Key=self.prefix + key)
            except ClientError as error:
                if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                    raise NotFound(key) from None
                raise
            return StoredObject(key, head["ContentLength"], head["ETag"].strip('"'))
        path = self.root / key
        if not path.is_file():
            raise NotFound(key)
        stat = path.stat()
        return StoredObject(key, stat.st_size, f"{stat.st_mtime_ns:x}-{stat.st_size:x}")

    def read(self, key: str) -> bytes:
        """The object's bytes; `NotFound` if it does not exist."""
        check_key(key)
        if self.is_s3:
            return self._get_object(key)[0]
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise NotFound(key) from None

    def delete(self, key: str) -> None:
        """Delete the object if it exists (in a folder, with the subfolders it leaves empty, as on S3)."""
        check_key(key)
        if self.is_s3:
            self.client().delete_object(Bucket=self.bucket, Key=self.prefix + key)
            return
        path = self.root / key
        path.unlink(missing_ok=True)
        for folder in path.relative_to(self.root).parents[:-1]:
            try:
                (self.root / folder).rmdir()
            except OSError:  # not empty
                return

    def write(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, whole or not at all."""
        check_key(key)
        if self.is_s3:
            self.client().put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)
        else:
            write_file_atomically(self.root / key, data)

    def download(self, key: str, path: Path) -> None:
        """Copy the object `key` to the local file `path`, streamed (S3: in parallel ranges)."""
        check_key(key)
        if self.is_s3:
            self.client().download_file(self.bucket, self.prefix + key, str(path))
        else:
            shutil.copyfile(self.root / key, path)

    def upload(self, path: Path, key: str) -> None:
        """Store the local file `path` under `key`, streamed, whole or not at all (S3: a multipart
        upload, which the object appears by only once complete)."""
        check_key(key)
        if self.is_s3:
            self.client().upload_file(str(path), self.bucket, self.prefix + key)
        else:
            copy_file_atomically(path, self.root / key)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and version, for `write_if`/`delete_if` (S3: its ETag as S3 gives it; a
        folder: the SHA-256 of the bytes); `NotFound` if it does not exist."""
        check_key(key)
        if not self.is_s3:
            data = self.read(key)
            return data, _digest(data)
        return self._get_object(key)

    def _get_object(self, key: str) -> tuple[bytes, str]:
        """An S3 object's bytes and ETag (as S3 gives it); `NotFound` if it does not exist. A body cut
        while streaming comes after botocore's retries, so it is tried again here, `DOWNLOAD_ATTEMPTS`
        times in all."""
        from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
        from urllib3.exceptions import ProtocolError

        client, attempt = self.client(), 1
        while True:
            try:
                reply = client.get_object(Bucket=self.bucket, Key=self.prefix + key)
                return reply["Body"].read(), reply["ETag"]
            except client.exceptions.NoSuchKey:
                raise NotFound(key) from None
            except (IncompleteReadError, ReadTimeoutError, ResponseStreamingError, ProtocolError):
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise
                attempt += 1

    def write_if(self, key: str, data: bytes, version: str | None) -> str:
        """Store `data` under `key` only if the object is still at `version` (None: only if there is
        none); return the new version, or raise `ConditionFailed`.

        `data` must differ from every earlier content of the key (hold a unique token): on S3 a retried
        write whose first try took effect (its reply was lost) fails its own condition, and is then
        recognised by its bytes.
        """
        check_key(key)
        if not self.is_s3:
            _swap_file(self.root / key, data, version)
            return _digest(data)
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            reply = self.client().put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, **condition
            )
        except ClientError as error:
            if error.response["Error"]["Code"] not in CONDITION_FAILED:
                raise
            try:
                stored, stored_version = self.read_versioned(key)
            except NotFound:
                raise ConditionFailed(key) from None
            if stored != data:
                raise ConditionFailed(key) from None
            return stored_version
        return reply["ETag"]

    def delete_if(self, key: str, version: str) -> None:
        """Delete the object only if it is still at `version`, else `ConditionFailed` (also when it does
        not exist)."""
        check_key(key)
        if self.is_s3:
            from botocore.exceptions import ClientError

            try:
                self.client().delete_object(Bucket=self.bucket, Key=self.prefix + key, IfMatch=version)
            except ClientError as error:
                if error.response["Error"]["Code"] in CONDITION_FAILED:
                    raise ConditionFailed(key) from None
                raise
            return
        path = self.root / key
        with _locked(path):
            if _file_version(path) != version:
                raise ConditionFailed(key)
            path.unlink()


def _digest(data: bytes) -> str:
    """The version of a file in a folder: the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def _file_version(path: Path) -> str | None:
    """The version of the file at `path`, None if there is none."""
    try:
        return _digest(path.read_bytes())
    except FileNotFoundError:
        return None


def _swap_file(path: Path, data: bytes, version: str | None) -> None:
    """Compare-and-swap of a file: write `data` to `path` only if the file is at `version` (None: only if
    there is none), else `ConditionFailed`. The check and the write hold the file's lock (`_locked`), so
    no other conditional write comes between; readers, who take no lock, see the old file or the new
    one, whole (`write_file_atomically`)."""
    with _locked(path):
        if _file_version(path) != version:
            raise ConditionFailed(str(path))
        write_file_atomically(path, data)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` of `.NAME.lock` beside `path` (made if need be, and kept: a lock file
    removed while another writer has it open would let two writers each lock one). The kernel releases
    the lock of a killed process. `TimeoutError` after `LOCK_WAIT_S` (a writer stopped while holding it).
    """
    import fcntl  # POSIX only

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)  # RDWR: NFS locks too
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path}: another writer has held its lock for {LOCK_WAIT_S:.0f} s"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(lock)  # and with it the lock


def _walk_in_key_order(folder: Path) -> Iterator[Path]:
    """The files under `folder`, in the order of their keys: a folder's entries sorted by name as a key
    (`printable_key`), with a subfolder's name read as "name/" (so "a-b" comes before "a/c", as their
    keys do)."""
    if not folder.is_dir():
        return

    def order(entry: os.DirEntry) -> str:
        name = printable_key(entry.name)[0]
        return name + "/" if entry.is_dir() else name

    entries = sorted(os.scandir(folder), key=order)
    for entry in entries:
        if entry.is_dir():
            yield from _walk_in_key_order(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)
