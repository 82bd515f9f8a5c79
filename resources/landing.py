"""A site's landing area: where new raw data arrives, as one Parquet file per day.

Layout: ``<site storage root>/landing/<dataset>/<YYYY-MM-DD>.parquet`` for a local site, and
``s3://<bucket>/<prefix>/landing/<dataset>/<YYYY-MM-DD>.parquet`` for an S3 site. Files are
written through the site's storage (`dagster_gravity.storage`), whose atomic writer makes
them appear only when complete; S3 requests use its client, with short timeouts. Files
dropped in by other tools (plain files, objects without gravity's checksum) are read too.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from botocore.exceptions import BotoCoreError, ClientError

from dagster_gravity.storage import S3Options, StorageError, storage_for_site
from dagster_gravity.storage.s3 import site_client, site_options
from dagster_gravity.topology import StorageSpec, Topology

LANDING = "landing"
_FILE = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})\.parquet$")


@dataclass(frozen=True)
class LandingFile:
    site: str
    dataset: str
    partition: str  # YYYY-MM-DD
    key: str  # path relative to the site's storage root (or bucket prefix)
    size_bytes: int
    version: str  # what changes when the file is rewritten: S3 ETag, or local mtime_ns
    modified: float = 0.0  # seconds since the epoch


def s3_client(spec: StorageSpec, options: S3Options = S3Options(), site: str = "(landing area)"):
    """An S3 client for a landing area, with site storage's short timeouts and few retries
    (so a sensor tick fails fast on an unreachable site instead of hanging), and the site's
    own credentials."""
    return site_client(site, spec, site_options(spec, options))


class LandingArea:
    """Read, write and list the landing files of one site."""

    def __init__(self, topology: Topology, site: str, s3_options: S3Options | None = None):
        self.topology = topology
        self.site = site
        self.spec = topology.site(site).storage
        # The site's storage: its atomic writer, and (S3) its client with short timeouts.
        self.storage = storage_for_site(topology, site, s3_options)

    @property
    def client(self):
        return self.storage.client

    # -- keys --

    @staticmethod
    def key(dataset: str, partition: str) -> str:
        return f"{LANDING}/{dataset}/{partition}.parquet"

    def _s3_key(self, key: str) -> str:
        return f"{self.spec.prefix}/{key}" if self.spec.prefix else key

    def s3_prefix(self, dataset: str) -> str:
        return self._s3_key(f"{LANDING}/{dataset}/")

    def path(self, key: str) -> Path:
        return Path(self.spec.path) / key

    def uri(self, dataset: str, partition: str) -> str:
        key = self.key(dataset, partition)
        if self.spec.kind == "s3":
            return f"s3://{self.spec.bucket}/{self._s3_key(key)}"
        return self.path(key).as_uri()

    # -- write --

    def write_table(self, dataset: str, partition: str, chunks: Iterator[pd.DataFrame]) -> LandingFile:
        """Write the day's file from DataFrame chunks (so gigabyte files stream), through the
        site storage's atomic writer: the file appears under its name only when complete."""
        with self.storage.open_write(self.key(dataset, partition)) as writer:
            _write_chunks(writer, chunks)
        return next(f for f in self.list(dataset) if f.partition == partition)

    # -- read --

    def read(self, dataset: str, partition: str) -> pd.DataFrame:
        """The day's file (written by `write_table` or dropped in by another tool)."""
        key = self.key(dataset, partition)
        if self.spec.kind != "s3":
            try:
                return pq.read_table(self.path(key)).to_pandas()
            except FileNotFoundError:
                raise self._missing(dataset, partition, "FileNotFoundError") from None
        s3_key = self._s3_key(key)
        try:
            body = self.client.get_object(Bucket=self.spec.bucket, Key=s3_key)["Body"].read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise self._missing(dataset, partition, code) from None
            raise StorageError(
                f"cannot read landing file for dataset {dataset!r} partition {partition!r}: S3 GET of "
                f"bucket {self.spec.bucket!r} key {s3_key!r} at {self.spec.endpoint_url or 'AWS S3'} "
                f"failed with {code or 'an error'}: {exc}",
                site=self.site,
                uri=self.uri(dataset, partition),
            ) from exc
        except BotoCoreError as exc:
            raise StorageError(
                f"cannot read landing file for dataset {dataset!r} partition {partition!r}: bucket "
                f"{self.spec.bucket!r} key {s3_key!r} at {self.spec.endpoint_url or 'AWS S3'} is "
                f"unreachable ({type(exc).__name__}: {exc})",
                site=self.site,
                uri=self.uri(dataset, partition),
            ) from exc
        return pq.read_table(io.BytesIO(body)).to_pandas()

    def _missing(self, dataset: str, partition: str, why: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"no landing file for dataset {dataset!r} partition {partition!r} at site "
            f"{self.site!r}: expected {self.uri(dataset, partition)} ({why})"
        )

    # -- list --

    def list(self, dataset: str) -> list[LandingFile]:
        """Finished landing files of a dataset (local listing; S3 goes through sensors.landing)."""
        if self.spec.kind == "s3":
            from dagster_aws.s3.sensor import get_objects

            objects = get_objects(self.spec.bucket, prefix=self.s3_prefix(dataset), client=self.client)
            return self.files_from_s3_objects(dataset, objects)
        folder = self.path(f"{LANDING}/{dataset}")
        if not folder.is_dir():
            return []
        files = []
        for entry in sorted(folder.iterdir()):
            m = _FILE.match(entry.name)
            if m and entry.is_file():
                st = entry.stat()
                files.append(
                    LandingFile(self.site, dataset, m["date"], self.key(dataset, m["date"]), st.st_size,
                                f"mtime{st.st_mtime_ns}", st.st_mtime)
                )
        return files

    def files_from_s3_objects(self, dataset: str, objects) -> list[LandingFile]:
        files = []
        for obj in objects:
            name = obj["Key"].rsplit("/", 1)[-1]
            m = _FILE.match(name)
            if m:
                modified = obj.get("LastModified")
                etag = str(obj.get("ETag", "")).strip('"') or _ts(modified)
                files.append(LandingFile(
                    self.site, dataset, m["date"], self.key(dataset, m["date"]), int(obj.get("Size", 0)),
                    f"etag{etag}", modified.timestamp() if isinstance(modified, datetime) else 0.0,
                ))
        return sorted(files, key=lambda f: f.partition)


def _ts(value) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _write_chunks(fh, chunks: Iterator[pd.DataFrame]) -> None:
    writer = None
    try:
        for chunk in chunks:
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(fh, table.schema, compression="snappy")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
