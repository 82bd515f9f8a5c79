"""A site's landing area: where new raw data arrives, as one Parquet file per day.

Layout: ``<site storage root>/landing/<dataset>/<YYYY-MM-DD>.parquet`` for a local site, and
``s3://<bucket>/<prefix>/landing/<dataset>/<YYYY-MM-DD>.parquet`` for an S3 site. Files are
written under a temporary name and renamed (local) or uploaded in one request (S3), so a
reader never sees half a file.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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


def s3_client(spec: StorageSpec):
    import boto3

    return boto3.client("s3", endpoint_url=spec.endpoint_url, region_name=spec.region or "us-east-1")


class LandingArea:
    """Read, write and list the landing files of one site."""

    def __init__(self, topology: Topology, site: str):
        self.topology = topology
        self.site = site
        self.spec = topology.site(site).storage

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
        """Write the day's file from DataFrame chunks (so gigabyte files stream)."""
        key = self.key(dataset, partition)
        if self.spec.kind == "s3":
            # Spool to a local temporary file, then upload (multipart for big files): the
            # object appears under its key only when the upload completes.
            with tempfile.TemporaryFile() as fh:
                _write_chunks(fh, chunks)
                fh.seek(0)
                s3_client(self.spec).upload_fileobj(fh, self.spec.bucket, self._s3_key(key))
        else:
            path = self.path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    _write_chunks(fh, chunks)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        return next(f for f in self.list(dataset) if f.partition == partition)

    # -- read --

    def read(self, dataset: str, partition: str) -> pd.DataFrame:
        key = self.key(dataset, partition)
        try:
            if self.spec.kind == "s3":
                body = s3_client(self.spec).get_object(Bucket=self.spec.bucket, Key=self._s3_key(key))["Body"].read()
                return pq.read_table(io.BytesIO(body)).to_pandas()
            return pq.read_table(self.path(key)).to_pandas()
        except (FileNotFoundError, _NoSuchKey()) as exc:
            raise FileNotFoundError(
                f"no landing file for dataset {dataset!r} partition {partition!r} at site "
                f"{self.site!r}: expected {self.uri(dataset, partition)} ({type(exc).__name__})"
            ) from None

    # -- list --

    def list(self, dataset: str) -> list[LandingFile]:
        """Finished landing files of a dataset (local listing; S3 goes through sensors.landing)."""
        if self.spec.kind == "s3":
            from dagster_aws.s3.sensor import get_objects

            objects = get_objects(self.spec.bucket, prefix=self.s3_prefix(dataset), client=s3_client(self.spec))
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


def _NoSuchKey():
    try:
        from botocore.exceptions import ClientError

        return ClientError
    except ImportError:  # pragma: no cover
        return FileNotFoundError


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
