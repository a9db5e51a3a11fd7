"""The dashboard's tables and CSV downloads, made from rows (a list of dicts) without pandas.

st.dataframe sends a pyarrow.Table to the browser as it is; any other input goes through
pandas. But building Arrow arrays from Python values (pa.array, pa.table,
Table.from_pylist, even pa.scalar) makes pyarrow import pandas to look for its types:
0.25 s, half of a page's first run on a fresh server. Arrays made from buffers
(pa.Array.from_buffers over bytes packed here) never look, so a page whose tables come
from `arrow_table()` and whose downloads come from `csv_text()` imports no pandas.

A column is one type: bool, int (int64), float (float64; ints among floats become
floats), str (utf8), or None in every row (a null column); None is a null cell and a
row without a key holds None there. Anything else is a TypeError that names the column.
"""
from __future__ import annotations

import csv
import io
import math
import struct

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def columns(rows: list[dict]) -> dict[str, list]:
    """Column name -> its values, names in the order rows first use them (as pandas orders them)."""
    names = dict.fromkeys(k for r in rows for k in r)
    return {name: [r.get(name) for r in rows] for name in names}


def kind(name: str, values: list) -> str:
    """'bool', 'int', 'float', 'str' or 'null': the one type of a column's values (None aside)."""
    kinds = set()
    for i, v in enumerate(values):
        if v is None:
            continue
        k = ("bool" if isinstance(v, bool) else "int" if isinstance(v, int) else
             "float" if isinstance(v, float) else "str" if isinstance(v, str) else None)
        if k is None:
            raise TypeError(f"Column {name!r}, row {i}: {type(v).__name__} value {v!r}; a table cell is a "
                            "bool, int, float, str or None.")
        if k == "int" and not INT64_MIN <= v <= INT64_MAX:
            raise TypeError(f"Column {name!r}, row {i}: {v} does not fit a 64-bit integer column.")
        kinds.add(k)
    if kinds == {"int", "float"}:
        return "float"
    if len(kinds) > 1:
        raise TypeError(f"Column {name!r} mixes {' and '.join(sorted(kinds))} values; a table column holds one "
                        "type (ints and floats together are floats): convert the values first.")
    return kinds.pop() if kinds else "null"


def _bitmap(flags: list[bool]) -> bytes:
    """Arrow's bit-packed booleans: bit i of byte i // 8, least significant bit first."""
    out = bytearray((len(flags) + 7) // 8)
    for i, f in enumerate(flags):
        if f:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def _array(pa, name: str, values: list):
    """One Arrow array from the column's buffers: validity bitmap (None when no cell is null), then data."""
    n, k = len(values), kind(name, values)
    if k == "null":
        return pa.Array.from_buffers(pa.null(), n, [None])
    valid = None if None not in values else pa.py_buffer(_bitmap([v is not None for v in values]))
    if k == "bool":
        return pa.Array.from_buffers(pa.bool_(), n, [valid, pa.py_buffer(_bitmap([v is True for v in values]))])
    if k == "int":
        data = struct.pack(f"<{n}q", *(0 if v is None else v for v in values))
        return pa.Array.from_buffers(pa.int64(), n, [valid, pa.py_buffer(data)])
    if k == "float":
        data = struct.pack(f"<{n}d", *(0.0 if v is None else float(v) for v in values))
        return pa.Array.from_buffers(pa.float64(), n, [valid, pa.py_buffer(data)])
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = [0]
    for b in encoded:
        offsets.append(offsets[-1] + len(b))
    # utf8 offsets are int32; a column past 2 GiB of text needs large_utf8's int64 ones
    typ, fmt = (pa.string(), "i") if offsets[-1] <= 0x7FFFFFFF else (pa.large_string(), "q")
    return pa.Array.from_buffers(typ, n, [valid, pa.py_buffer(struct.pack(f"<{n + 1}{fmt}", *offsets)),
                                          pa.py_buffer(b"".join(encoded))])


def arrow_table(rows: list[dict]):
    """The rows as a pyarrow.Table for st.dataframe, columns in first-use order."""
    import pyarrow as pa

    cols = columns(rows)
    return pa.Table.from_arrays([_array(pa, name, vals) for name, vals in cols.items()], names=list(cols))


def _cell(k: str, v) -> str:
    if v is None:
        return ""
    if k == "float":  # repr: the shortest text that reads back as the same float, as pandas writes it
        return "" if math.isnan(v) else repr(float(v))
    return str(v)  # str stays, int in digits, bool as True / False


def csv_text(rows: list[dict]) -> str:
    """The rows as CSV text (header, then one line per row), as pandas' DataFrame(rows).to_csv(index=False)
    writes them: floats shortest round-trip, NaN and None empty, bools True / False. One difference: an int
    column with a None stays in digits where pandas turns the whole column to floats ("5.0")."""
    cols = columns(rows)
    kinds = {name: kind(name, vals) for name, vals in cols.items()}
    cells = [[_cell(kinds[name], v) for v in vals] for name, vals in cols.items()]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(cols)
    w.writerows(zip(*cells))
    return out.getvalue()
