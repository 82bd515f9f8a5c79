"""Replication throughput between two sites: gravity's verified copy against a raw copy.

    .venv/bin/python benchmarks/replication.py            # 100 MB objects, 5 runs each
    .venv/bin/python benchmarks/replication.py --quick    # 4 MB, 2 runs (used by a test)
    .venv/bin/python benchmarks/replication.py --endpoint-url http://127.0.0.1:8333

Paths: local->local, S3->S3 (two buckets = two sites), S3->local. The raw copy is what a
script without gravity would do: `shutil.copyfile` for files, boto3 `download_fileobj` +
`upload_fileobj` (same TransferConfig concurrency) for S3->S3, boto3 `download_file` for
S3->local. Gravity's copy also hashes every byte (sha256), checks it against the source's
checksum, and publishes atomically (fsync + rename, or CompleteMultipartUpload), through
`replicate_once`, as the IO manager does: single flight (a flock or an S3 lease) included.
Raw and gravity runs alternate so machine noise hits both alike; medians are reported.
Without --endpoint-url a SeaweedFS server is started (and stopped) on loopback.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagster_gravity.storage import LocalSiteStorage, S3SiteStorage, replicate, replicate_once  # noqa: E402
from dagster_gravity.storage.s3 import S3Options, make_client, transfer_config  # noqa: E402

MB = 1_000_000


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_pair(name, size, runs, raw_copy, gravity_copy, cleanup) -> dict:
    raw, grav = [], []
    for _ in range(runs):
        raw.append(timed(raw_copy))
        cleanup()
        grav.append(timed(gravity_copy))
        cleanup()
    raw_s, grav_s = statistics.median(raw), statistics.median(grav)
    return {
        "path": name,
        "size_mb": size / MB,
        "raw_mb_s": size / MB / raw_s,
        "gravity_mb_s": size / MB / grav_s,
        "ratio": raw_s / grav_s,
    }


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            chunk = min(remaining, 8 * 1024 * 1024)
            f.write(os.urandom(chunk))
            remaining -= chunk


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="4 MB objects, 2 runs")
    parser.add_argument("--endpoint-url", help="an existing S3 server (default: start SeaweedFS)")
    parser.add_argument("--workdir", help="where files go (default: a temporary directory under .gravity/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mb, args.runs = 4.0, 2
    size = int(args.size_mb * MB)

    base = Path(args.workdir or Path(__file__).resolve().parents[1] / ".gravity")
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-replication-", dir=base))
    server = None
    try:
        endpoint = args.endpoint_url
        if endpoint is None:
            from tests.support.s3 import start_seaweedfs

            server = start_seaweedfs(work / "seaweedfs")
            endpoint = server.endpoint_url
        else:
            from tests.support.s3 import ensure_test_credentials

            ensure_test_credentials()
        results = run_all(work, endpoint, size, args.runs)
        hash_mb_s = hash_throughput(work / "source.bin", size, args.runs)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"replication throughput, {args.size_mb:g} MB objects, median of {args.runs} runs (raw and gravity alternate)")
    print(f"machine: {os.cpu_count()} CPUs, load average {load} at the end (S3 server on the same machine)")
    print(f"{'path':<16}{'raw MB/s':>12}{'gravity MB/s':>15}{'gravity/raw':>13}")
    for r in results:
        print(f"{r['path']:<16}{r['raw_mb_s']:>12.1f}{r['gravity_mb_s']:>15.1f}{r['ratio']:>12.0%}")
    print(f"sha256 of the object from page cache, no copy: {hash_mb_s:.1f} MB/s (ceiling for any verified copy here)")
    return 0


def hash_throughput(path: Path, size: int, runs: int) -> float:
    def hash_file():
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(8 * 1024 * 1024):
                digest.update(chunk)

    return size / MB / statistics.median(timed(hash_file) for _ in range(runs))


def run_all(work: Path, endpoint: str, size: int, runs: int) -> list[dict]:
    options = S3Options()
    client = make_client(endpoint, "us-east-1", options)
    tconfig = transfer_config(options)
    suffix = uuid.uuid4().hex[:8]
    bucket_a, bucket_b = f"bench-a-{suffix}", f"bench-b-{suffix}"
    client.create_bucket(Bucket=bucket_a)
    client.create_bucket(Bucket=bucket_b)

    local_a = LocalSiteStorage("local-a", work / "site-a")
    local_b = LocalSiteStorage("local-b", work / "site-b")
    s3_a = S3SiteStorage("s3-a", bucket_a, endpoint_url=endpoint, options=options, client=client)
    s3_b = S3SiteStorage("s3-b", bucket_b, endpoint_url=endpoint, options=options, client=client)

    # one source object per backend, written through gravity so it has its checksum
    source_file = work / "source.bin"
    write_random_file(source_file, size)
    with open(source_file, "rb") as f, local_a.open_write("obj.bin") as writer:
        shutil.copyfileobj(f, writer, 8 * 1024 * 1024)
    info = local_a.head("obj.bin")
    replicate(local_a, s3_a, "obj.bin", info.sha256)
    raw_dir = work / "raw"
    raw_dir.mkdir()

    def clean_local_b():
        local_b.delete("obj.bin")
        for p in raw_dir.iterdir():
            p.unlink()

    def clean_s3_b():
        client.delete_object(Bucket=bucket_b, Key="obj.bin")
        clean_local_b()

    def raw_s3_to_s3():
        buffer = io.BytesIO()
        client.download_fileobj(bucket_a, "obj.bin", buffer, Config=tconfig)
        buffer.seek(0)
        client.upload_fileobj(buffer, bucket_b, "obj.bin", Config=tconfig)

    return [
        bench_pair(
            "local->local",
            size,
            runs,
            lambda: shutil.copyfile(local_a.path("obj.bin"), raw_dir / "obj.bin"),
            lambda: replicate_once(local_a, local_b, "obj.bin", info.sha256),
            clean_local_b,
        ),
        bench_pair(
            "S3->S3",
            size,
            runs,
            raw_s3_to_s3,
            lambda: replicate_once(s3_a, s3_b, "obj.bin", info.sha256),
            clean_s3_b,
        ),
        bench_pair(
            "S3->local",
            size,
            runs,
            lambda: client.download_file(bucket_a, "obj.bin", str(raw_dir / "obj.bin"), Config=tconfig),
            lambda: replicate_once(s3_a, local_b, "obj.bin", info.sha256),
            clean_local_b,
        ),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
