"""The estimate command's work without click: the fast start-up path (cli/fast.py) and the
click command (cli/main.py) both print what `render` returns."""
from __future__ import annotations

from memplan.cli.options import config_kwargs, host_ram_bytes
from memplan.errors import MemplanError


def run_estimate(opts: dict):
    from memplan.estimator import estimate

    return estimate(opts["model"], opts["method"], gpu=opts.get("gpu"), gpu_file=opts.get("gpu_file"),
                    **config_kwargs(opts))


def apply_layout(est, layout, num_gpus, bucket_view):
    """`est` per GPU under the layout (unchanged without --layout / --num-gpus)."""
    if layout is None and num_gpus in (None, 1):
        return est
    from memplan.parallel import shard
    if layout is None:
        raise MemplanError("--num-gpus needs --layout (ddp, zero1, fsdp2 or fsdp2-no-reshard).")
    return shard(est, layout, num_gpus or 1, bucket_view=bucket_view)


def layout_line(est) -> str | None:
    if getattr(est, "layout", "single") == "single":
        return None
    return (f"Layout:         {est.engine} on {est.num_gpus} GPUs; every number is per GPU, "
            f"the worst rank's (rank {est.rank})")


def with_layout_line(table: str, est) -> str:
    line = layout_line(est)
    if line is None:
        return table
    lines = table.split("\n")
    return "\n".join(lines[:1] + [line] + lines[1:])


def render(opts: dict, as_json: bool = False, layout=None, num_gpus=None, bucket_view=False) -> str:
    """`memplan estimate`'s output for the parsed options."""
    est = apply_layout(run_estimate(opts), layout, num_gpus, bucket_view)
    host_ram = host_ram_bytes(opts)
    if as_json:
        import json

        d = est.to_dict()
        if host_ram is not None:
            d["host_fit"] = {"host_required_bytes": est.host_bytes, "host_capacity_bytes": host_ram,
                             "host_fits": est.host_bytes <= host_ram}
        return json.dumps(d, indent=2)
    from memplan.cli.tables import estimate_table

    return with_layout_line(estimate_table(est, host_ram), est)
