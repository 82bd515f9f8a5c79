"""Helpers for the storage tests: damage a stored object, list what a site directory holds."""

from __future__ import annotations

from pathlib import Path

from dagster_gravity.storage import LocalSiteStorage, S3SiteStorage


def flip_byte_local(storage: LocalSiteStorage, key: str, offset: int) -> None:
    with open(storage.path(key), "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def flip_byte_s3(storage: S3SiteStorage, key: str, offset: int) -> None:
    """Rewrite the object with one byte flipped but the original sha256 metadata."""
    response = storage.client.get_object(Bucket=storage.bucket, Key=storage.object_key(key))
    data = bytearray(response["Body"].read())
    data[offset] ^= 0xFF
    storage.client.put_object(
        Bucket=storage.bucket, Key=storage.object_key(key), Body=bytes(data), Metadata=response["Metadata"]
    )


def visible_files(root: Path) -> list[str]:
    """Objects under their final names (hidden data and temporary files left out)."""
    return sorted(
        p.relative_to(root).as_posix() for p in all_files(root) if not p.name.startswith(".")
    )


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()) if root.exists() else []
