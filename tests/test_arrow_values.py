"""core/arrow_values: the same Arrow values as pyarrow's converter gives, from buffers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from avcurate.core.arrow_values import empty, from_numpy, scalar, strings, to_numpy


@pytest.mark.parametrize("values", [np.arange(7, dtype=np.int64), np.linspace(0, 1, 5),
                                    np.arange(3, dtype=np.int32), np.array([], np.int64),
                                    np.array([True, False, True] * 7), np.arange(10)[::3]])
def test_numpy_round_trip_matches_pyarrow(values):
    arr = from_numpy(values)
    assert arr.equals(pa.array(values))
    assert np.array_equal(to_numpy(arr), values)
    assert np.array_equal(to_numpy(arr.slice(1)), values[1:])  # offsets honoured
    chunked = pa.chunked_array([arr.slice(0, 2), arr.slice(2)], arr.type)
    assert np.array_equal(to_numpy(chunked), values)


def test_strings_scalars_and_nulls():
    texts = ["a", None, "", "é👍", "long " * 10]
    assert strings(texts).equals(pa.array(texts, pa.string()))
    assert strings([]).equals(pa.array([], pa.string()))
    assert strings(pa.chunked_array([["x"], ["y"]])).equals(pa.array(["x", "y"]))
    assert strings(pa.array([None, None])).type == pa.string()
    assert scalar("hi") == pa.scalar("hi") and scalar(0.5) == pa.scalar(0.5)
    assert scalar(True) == pa.scalar(True)
    mask = pc.greater(pa.array([1.0, None, 3.0]), scalar(2.0))
    assert to_numpy(mask).tolist() == [False, False, True]  # null counts as False
    for typ in (pa.bool_(), pa.int64()):  # DuckDB's empty results have no chunks at all
        assert len(to_numpy(pa.chunked_array([], typ))) == 0
    with pytest.raises(ValueError, match="nulls"):
        to_numpy(pa.array([1, None]))
    schema = pa.schema([("a", pa.string()), ("b", pa.list_(pa.float64()))])
    assert empty(schema).equals(schema.empty_table())
