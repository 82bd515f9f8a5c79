"""Plain reasons for the operating-system errors a storage write meets (disk full, permission
denied, read-only filesystem), so a StorageError says what went wrong in words, not only
as `[Errno 28]`."""

from __future__ import annotations

import errno

_PLAIN = {
    errno.ENOSPC: "disk full (ENOSPC)",
    errno.EDQUOT: "disk quota exceeded (EDQUOT)",
    errno.EACCES: "permission denied (EACCES)",
    errno.EPERM: "operation not permitted (EPERM)",
    errno.EROFS: "read-only filesystem (EROFS)",
    errno.EIO: "I/O error (EIO)",
    errno.ENAMETOOLONG: "file name too long (ENAMETOOLONG)",
}


def os_error_reason(exc: OSError, doing: str) -> str:
    """E.g. "disk full (ENOSPC) while writing /data/.x.tmp-1 ([Errno 28] No space left on device)"."""
    code = exc.errno
    plain = _PLAIN.get(code) if code is not None else None
    if plain is None:
        name = errno.errorcode.get(code, str(code)) if code is not None else type(exc).__name__
        plain = f"{(exc.strerror or type(exc).__name__).lower()} ({name})"
    return f"{plain} while {doing} ({exc})"
