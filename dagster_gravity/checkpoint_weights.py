"""The bytes of checkpoint weights: safetensors (the default) or numpy .npz, neither of which
executes code on load.

- `safetensors` holds dense bool, integer and float tensors (and complex64); arrays are made
  C-contiguous first, because safetensors writes an array's memory as it lies, so a
  Fortran-ordered or strided array would otherwise come back scrambled.
- `npz` also holds strings, bytes, structured and complex128 arrays; it is loaded with
  `allow_pickle=False`. Every checkpoint written before safetensors was npz, and still loads.

Arrays that either format could store only by pickling (dtype object) are refused before
anything is written, so no checkpoint is ever unloadable.
"""

from __future__ import annotations

import io
from typing import Mapping

import numpy as np

from dagster_gravity.errors import CheckpointError

SAFETENSORS = "safetensors"
NPZ = "npz"
WEIGHTS_FORMATS = (SAFETENSORS, NPZ)
DEFAULT_FORMAT = SAFETENSORS
LEGACY_FORMAT = NPZ  # what a manifest that names no format was written in
_SUFFIX = {SAFETENSORS: ".safetensors", NPZ: ".npz"}
# What safetensors' numpy API writes and reads back with the same dtype (native byte order).
SAFETENSORS_DTYPES = tuple(
    np.dtype(t) for t in (
        np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
        np.float16, np.float32, np.float64, np.complex64,
    )
)


class WeightsFormatError(CheckpointError):
    """Arrays that cannot be written in the asked format, or an unknown format."""


def check_format(weights_format: str, what: str = "weights_format") -> str:
    if weights_format not in WEIGHTS_FORMATS:
        raise WeightsFormatError(
            f"{what} {weights_format!r} is not a weights format; expected one of {list(WEIGHTS_FORMATS)}"
        )
    return weights_format


def suffix(weights_format: str) -> str:
    """The file name ending of the format ('.safetensors', '.npz')."""
    return _SUFFIX[check_format(weights_format)]


def format_of(key: str) -> str:
    """The format of a stored weights file, from its name (progress files name theirs)."""
    for weights_format, ending in _SUFFIX.items():
        if key.endswith(ending):
            return weights_format
    raise WeightsFormatError(f"weights file {key!r} ends in none of {sorted(_SUFFIX.values())}")


def encode(arrays: Mapping[str, np.ndarray], weights_format: str = DEFAULT_FORMAT, what: str = "a checkpoint") -> bytes:
    """The arrays as bytes of the format; refuses what could not be loaded back."""
    check_format(weights_format)
    checked = _checked_arrays(arrays, what)
    if weights_format == NPZ:
        buf = io.BytesIO()
        np.savez(buf, **checked)
        return buf.getvalue()
    from safetensors.numpy import save

    for key, array in checked.items():
        if array.dtype.newbyteorder("=") not in SAFETENSORS_DTYPES:
            raise WeightsFormatError(
                f"{what}: array {key!r} has dtype {array.dtype}, which safetensors cannot store; expected one of "
                f"{', '.join(str(d) for d in SAFETENSORS_DTYPES)} (convert it), or weights_format='npz', "
                "which also holds strings, bytes, structured and complex128 arrays"
            )
    return save({key: np.ascontiguousarray(a) if a.ndim else a for key, a in checked.items()})


def decode(data: bytes, weights_format: str) -> dict[str, np.ndarray]:
    """The arrays stored in `data`; raises ValueError (or the format's own error) when the
    bytes are not a valid file of the format."""
    if check_format(weights_format) == NPZ:
        # allow_pickle=False: object arrays are refused, nothing executes on load.
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    from safetensors.numpy import load

    # Copies: the loaded arrays may be views of `data`, and training updates them.
    return {k: np.array(v) for k, v in load(data).items()}


def _checked_arrays(arrays: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    if not arrays:
        raise WeightsFormatError(f"{what} needs at least one array; got none")
    checked = {}
    for key, value in arrays.items():
        try:
            array = np.asarray(value)
        except ValueError as exc:  # ragged nesting
            raise WeightsFormatError(f"{what}: array {key!r} is not a regular array ({exc}); expected an ndarray") from None
        # Such a dtype could be written only by pickling, and loads never unpickle: a
        # checkpoint holding one could never be loaded, so never write it.
        if array.dtype.hasobject:
            raise WeightsFormatError(
                f"{what}: array {key!r} has dtype {array.dtype}, which could be stored only by pickling "
                "and checkpoints never unpickle; expected a numeric, bool, string or other fixed-size dtype "
                "(convert it, e.g. np.asarray(x, dtype=float))"
            )
        checked[key] = array
    return checked
