"""Arrow values to and from Python and NumPy, built from buffers.

Why not `pa.array`, `pa.scalar` and `.to_numpy()`: the first time pyarrow converts a
Python or NumPy value, either way, it imports pandas to ask whether the value is a
pandas object (pyarrow's `_PandasAPIShim`; there is no switch to turn it off). That is
~0.28 s of every command that converts anything, on this 2-core machine, and a filter
stage converts only a handful of values per shard: a threshold, a mask, the reason
texts. `pa.Array.from_buffers` and `np.frombuffer` wrap the same memory with no
converter and so no pandas. These helpers cover the types the filters use (numbers,
booleans, strings); anything else goes through pyarrow's converter as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

_NUMPY = {np.dtype(np.int64): pa.int64(), np.dtype(np.int32): pa.int32(),
          np.dtype(np.uint32): pa.uint32(), np.dtype(np.float64): pa.float64()}
_ARROW = {typ: dtype for dtype, typ in _NUMPY.items()}


def _bits(mask: np.ndarray) -> pa.Buffer:
    return pa.py_buffer(np.packbits(mask, bitorder="little"))


def from_numpy(values: np.ndarray) -> pa.Array:
    """A 1-d NumPy array of booleans or of the numbers in `_NUMPY` as an Arrow array
    (no nulls). Numbers share the NumPy memory; booleans are packed into bits."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, _bits(values)])
    return pa.Array.from_buffers(_NUMPY[values.dtype], len(values), [None, pa.py_buffer(values)])


def strings(values: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Python strings (None for null) as an Arrow string array; an Arrow array is
    returned as one string array (its chunks combined), not passed through `pa.array`,
    which also imports pandas to look at it."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if values.type == pa.string() else values.cast(pa.string())
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    valid = np.array([v is not None for v in values], bool)
    validity = None if valid.all() else _bits(valid)
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def scalar(value: float | str | bool) -> pa.Scalar:
    """A Python float, string or bool as an Arrow scalar (an operand of pyarrow compute)."""
    if isinstance(value, str):
        return strings([value])[0]
    if isinstance(value, bool):
        return from_numpy(np.array([value]))[0]
    return from_numpy(np.array([value], np.float64))[0]


FALSE = scalar(False)


def empty(schema: pa.Schema) -> pa.Table:
    """A table of no rows (`schema.empty_table()` converts an empty list per column)."""
    return pa.Table.from_batches([], schema)


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow array of booleans (null counts as False) or of the numbers in `_NUMPY`
    (with no nulls) as a NumPy array: numbers without a copy when in one chunk (and so
    read-only)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:  # may have no data buffer at all
        return np.empty(0, bool if values.type == pa.bool_() else _ARROW[values.type])
    if values.type == pa.bool_():
        if values.null_count:
            values = values.fill_null(FALSE)
        bits = np.frombuffer(values.buffers()[1], np.uint8)
        count = values.offset + len(values)
        return np.unpackbits(bits, count=count, bitorder="little")[values.offset:].astype(bool)
    if values.null_count:
        raise ValueError(f"to_numpy: {values.null_count} nulls in a {values.type} array")
    dtype = _ARROW[values.type]
    return np.frombuffer(values.buffers()[1], dtype, count=len(values),
                         offset=values.offset * dtype.itemsize)
