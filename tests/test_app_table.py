"""memplan.app.table: Arrow tables built from buffers equal pyarrow's own (Table.from_pylist),
CSV text equals pandas' to_csv, and neither imports pandas (a page's first run would pay 0.25 s)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

from memplan.app.table import arrow_table, columns, csv_text, kind  # noqa: E402

INT64_MAX, INT64_MIN = (1 << 63) - 1, -(1 << 63)

# one type per column, each with and without nulls
ROWS = {
    "ints": [{"a": 0}, {"a": -1}, {"a": 7}, {"a": INT64_MAX}, {"a": INT64_MIN}, {"a": 13_476_831_232}],
    "ints with None": [{"a": 1}, {"a": None}, {"a": -5}],
    "floats": [{"x": 0.1 + 0.2}, {"x": -0.0}, {"x": 1e-300}, {"x": 1e16}, {"x": 123456789.123456789},
               {"x": 1e-05}, {"x": -2.5}],
    "floats with None": [{"x": None}, {"x": 1.5}, {"x": None}],
    "nan and inf": [{"x": math.nan}, {"x": math.inf}, {"x": -math.inf}, {"x": 1.0}],
    "ints among floats": [{"x": 1}, {"x": 2.5}, {"x": None}, {"x": -3}],
    "bools": [{"b": True}, {"b": False}, {"b": True}],
    "bools with None": [{"b": None}, {"b": False}, {"b": True}],
    "strings": [{"s": ""}, {"s": "GiB"}, {"s": "é ü ß"}, {"s": "◀ this run"}, {"s": "日本語 🚀"},
                {"s": 'a,b "c"\nd'}, {"s": "–"}],
    "strings with None": [{"s": None}, {"s": ""}, {"s": "x"}, {"s": None}],
    "only None": [{"n": None}, {"n": None}],
    "missing keys": [{"a": 1, "s": "x"}, {"s": "y", "f": 2.5}, {"a": 3, "b": True}],
    "one row": [{"method": "galore", "fits": True, "peak (GiB)": 12.5, "rank": 128, "": ""}],
    "nine columns, nine rows": [{f"c{j}": (i * j if j % 3 == 0 else f"{i}/{j}" if j % 3 == 1 else i / (j + 1))
                                 for j in range(9)} for i in range(9)],
    "seventeen rows (validity bitmap past two bytes)": [{"v": None if i % 5 == 0 else i} for i in range(17)],
}


def _cells(t):
    """Every cell, floats compared bit for bit (NaN equals NaN, -0.0 differs from 0.0)."""
    out = []
    for col in t.columns:
        out.append([("float", v.hex()) if isinstance(v, float) else v for v in col.to_pylist()])
    return out


@pytest.mark.parametrize("name", list(ROWS))
def test_table_equals_pyarrow_from_pylist(name):
    rows = ROWS[name]
    names = list(dict.fromkeys(k for r in rows for k in r))  # from_pylist takes the first row's keys only
    ours, ref = arrow_table(rows), pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows])
    ours.validate(full=True)
    assert ours.schema == ref.schema
    assert ours.num_rows == ref.num_rows == len(rows)
    assert [c.null_count for c in ours.columns] == [c.null_count for c in ref.columns]
    assert _cells(ours) == _cells(ref)


def test_empty_rows_make_an_empty_table():
    t = arrow_table([])
    assert t.num_rows == 0 and t.num_columns == 0
    assert csv_text([]) == pd.DataFrame([]).to_csv(index=False) == "\n"


def test_columns_in_first_use_order_as_pandas():
    rows = ROWS["missing keys"]
    assert list(columns(rows)) == list(pd.DataFrame(rows).columns) == ["a", "s", "f", "b"]
    assert arrow_table(rows).column_names == ["a", "s", "f", "b"]


@pytest.mark.parametrize("rows,message", [
    ([{"a": 1}, {"a": "x"}], "Column 'a' mixes int and str"),
    ([{"a": True}, {"a": 1}], "Column 'a' mixes bool and int"),
    ([{"a": 1.5}, {"a": "x"}], "Column 'a' mixes float and str"),
    ([{"a": {"k": 1}}], "Column 'a', row 0: dict value"),
    ([{"a": 1}, {"a": (1, 2)}], "Column 'a', row 1: tuple value"),
    ([{"a": 1 << 63}], "does not fit a 64-bit integer column"),
    ([{"a": -(1 << 63) - 1}], "does not fit a 64-bit integer column"),
])
def test_other_values_are_a_type_error_naming_the_column(rows, message):
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        arrow_table(rows)
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        csv_text(rows)


def test_kind():
    assert kind("a", [None, 1, 2]) == "int"
    assert kind("a", [1, 2.0]) == "float"
    assert kind("a", [None, None]) == "null" and kind("a", []) == "null"
    assert kind("a", [False, None]) == "bool" and kind("a", ["", None]) == "str"


# pandas turns an int column with a None (or a row without the key) into floats ("5.0"); csv_text keeps
# the digits (bytes stay integers)
CSV_CASES = [name for name in ROWS if name not in ("ints with None", "seventeen rows (validity bitmap past two bytes)",
                                                   "missing keys")]


@pytest.mark.parametrize("name", CSV_CASES)
def test_csv_text_equals_pandas_to_csv(name):
    rows = ROWS[name]
    assert csv_text(rows) == pd.DataFrame(rows).to_csv(index=False)


def test_csv_text_keeps_an_int_column_with_none_in_digits():
    assert csv_text([{"a": 5, "b": "x"}, {"a": None, "b": "y"}]) == "a,b\n5,x\n,y\n"


def _report_points():
    """Two validation points shaped like `memplan validate` writes them, one without a verdict."""
    import memplan
    from memplan.app import report

    points = []
    for m, passed in (("adamw", True), ("galore", None)):
        est = memplan.estimate("llama-60m", m, rank=32, batch_size=4, seq_len=256)
        cats = dict(est.phases[est.peak_phase])
        meas = {c: int(v * 1.02) for c, v in cats.items()}
        point = {"config": {"model": "llama-60m", "method": m, "rank": 32, "batch_size": 4, "seq_len": 256},
                 "estimate": {"peak_bytes": est.peak_bytes, "categories": cats},
                 "measured": {"peak_bytes": sum(meas.values()), "categories": meas}, "failures": []}
        if passed is not None:
            point["passed"] = passed
        points.append(point)
    return report.parse_report(json.dumps({"results": points})).points


def test_the_pages_tables_and_csv_equal_what_pandas_made():
    """The page builders' rows, from the library: the table st.dataframe gets and the CSV text hold what a
    pandas DataFrame of the same rows gave (the pages' content before app/table.py)."""
    import memplan
    from memplan.app import pages_compare, pages_estimate, pages_hardware, pages_sweep, pages_validation
    from memplan.app import validation_dist
    from memplan.planner import fit_report

    est = memplan.estimate("llama-1b", "galore", rank=64, gpu="rtx-4090")
    rows = [{"method": r.method, "breakdown": dict(r.estimate.breakdown), "fits": r.estimate.fit().fits,
             "peak_phase": r.estimate.peak_phase, "device_total_bytes": r.estimate.device_total_bytes,
             "headroom_bytes": r.estimate.fit().headroom_bytes, "peak_bytes": r.estimate.peak_bytes,
             "saved_vs_adamw_bytes": r.saved_bytes, "saved_vs_adamw_pct": 100 * r.saved_fraction}
            for r in memplan.compare("llama-1b", ["adamw", "galore", "lora"], gpu="rtx-4090")]
    plan = [{"gpu": p.gpu.id, "name": p.gpu.name, "count": p.num_gpus, "label": f"{p.num_gpus} x {p.gpu.id}",
             "layout": p.layout, "layout_name": p.engine, "required_bytes": p.per_gpu_bytes,
             "capacity_bytes": p.capacity_bytes, "headroom_bytes": p.headroom_bytes,
             "max_batch_size": p.max_batch_size, "price_per_hour_usd": p.price_per_hour_usd,
             "price_purchase_usd": p.price_purchase_usd, "price_date": p.gpu.price_date}
            for p in memplan.plan("llama-1b", "galore", gpu_counts=(1, 2))]
    run = type("Run", (), {"layerwise": False, "checkpointing": True, "seq_len": 2048})()
    options = [r.to_dict() for r in fit_report("llama-1b", "rtx-4090", ["galore", "adamw"], rank=64)]
    points = _report_points()
    shown = [pages_estimate.breakdown_table(est), pages_estimate.options_table(options[:4], run),
             pages_estimate.options_table(options[4:], run), pages_compare.table(rows), pages_hardware.table(plan),
             pages_validation.summary_table(points), validation_dist.points_frame(_dist_points())]
    downloads = [pages_estimate.csv_table(est), pages_compare.csv_table(rows), pages_hardware.csv_table(plan),
                 pages_sweep.rank_csv({"galore": [(64, 10), (128, 20)]}, {"galore": (100, 15)}),
                 pages_sweep.axis_csv("batch_size", [1, 2], [dict(est.breakdown), dict(est.breakdown)]),
                 pages_validation.long_table(points)]
    for r in shown:
        ours = arrow_table(r)
        theirs = pa.Table.from_pandas(pd.DataFrame(r), preserve_index=False)
        assert r and ours.column_names == theirs.column_names
        assert _cells(ours) == _cells(theirs.cast(ours.schema))
    for r in downloads:
        assert r and csv_text(r) == pd.DataFrame(r).to_csv(index=False)


def _dist_points() -> list[dict]:
    return [{"config": {"model": "/models/llama-60m", "method": "galore", "layout": "fsdp2", "bucket_view": True,
                        "num_gpus": 2, "device": "cpu", "precision": "bf16", "batch_size": 2, "seq_len": 128},
             "estimate": {"engine": "FSDP2", "peak_bytes": 3 << 20}, "measured": {"peak_bytes": 3 << 20},
             "error": {"peak": {"relative": 0.001}}, "passed": True, "failures": []},
            {"config": {"model": "llama-60m", "method": "adamw", "layout": "ddp", "num_gpus": 4, "device": "cpu",
                        "precision": "fp32", "batch_size": 1, "seq_len": 64},
             "estimate": None, "measured": None, "error": None, "passed": False,
             "failures": ["RuntimeError: out of memory\nmore"]}]


def test_building_tables_and_csv_imports_no_pandas():
    code = ("import sys\n"
            "import memplan.app.table as t\n"
            "rows = [{'a': 1, 'b': 2.5, 'c': 'x', 'd': True, 'e': None}, {'a': None, 'b': None, 'c': None}]\n"
            "tab = t.arrow_table(rows)\n"
            "tab.validate(full=True)\n"
            "import pyarrow.ipc\n"
            "sink = pyarrow.BufferOutputStream()\n"
            "with pyarrow.ipc.new_stream(sink, tab.schema) as w:\n"
            "    w.write_table(tab)\n"
            "t.csv_text(rows)\n"
            "print('pandas' in sys.modules, tab.num_rows)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "2"]


def test_the_module_imports_without_pyarrow():
    code = ("import sys\n"
            "sys.modules['pyarrow'] = None\n"
            "import memplan.app.table as t\n"
            "print(t.csv_text([{'a': 1}]).strip())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["a", "1"]
