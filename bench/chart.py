"""One PNG with the comparisons: drain, pickup latency, ingest, scale, flow control."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

COLORS = {"taskq": "#1f77b4", "pgqueuer": "#ff7f0e", "procrastinate": "#2ca02c"}


def _bars(ax: Any, labels: list[str], values: list[float], colors: list[str]) -> None:
    bars = ax.bar(labels, values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:,.0f}" if value >= 10 else f"{value:.2f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )


def _flow(ax: Any, f: dict[str, Any]) -> None:
    flow = f.get("flow_jobs_per_s", {})
    names = {
        "before": "no limits\n(code before)",
        "none": "no limits",
        "max_running": "max_running\n= concurrency",
        "per_key": f"per key = 1\n{f.get('flow_keys') or 0:,} keys",
    }
    if flow:
        _bars(
            ax,
            [names.get(k, k) for k in flow],
            list(flow.values()),
            ["#7f7f7f" if k == "before" else COLORS["taskq"] for k in flow],
        )
    ax.set_title("taskq flow control: drain (jobs/s)")
    ax.tick_params(axis="x", labelsize=8)


def draw(results: dict[str, Any], path: Path) -> None:
    f = results["summary"]["figures"]
    if "flow" in results and not any(w in results for w in ("drain", "latency", "ingest", "scale")):
        fig, ax = plt.subplots(figsize=(7, 4.5))  # a flow-control run alone: its one chart
        _flow(ax, f)
        fig.suptitle(
            f"{results['machine']['cores']} cores; medians of {results['config']['rounds']} "
            "rounds, interleaved",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    fig, axes = plt.subplots(2, 3, figsize=(17, 8.5))
    cores = results["machine"]["cores"]
    version = results["machine"]["postgres"]["version"].split()[0]
    fig.suptitle(
        f"taskq vs peers — {cores} cores, PostgreSQL {version} (medians; one run)",
        fontsize=12,
    )

    ax = axes[0][0]
    drain = f.get("drain_jobs_per_s", {})
    labels = list(drain)
    values = [drain[k] for k in labels]
    colors = [COLORS[k] for k in labels]
    if f.get("ceiling"):
        headline_mode = f["ceiling"][0]["synchronous_commit"]
        for c in f["ceiling"]:
            if c["synchronous_commit"] == headline_mode:
                labels.append(f"DB ceiling\nbatch {c['batch']}")
                values.append(c["jobs_per_s"])
                colors.append("#7f7f7f")
    _bars(ax, labels, values, colors)
    ax.set_title("Drain throughput (jobs/s, higher is better)")
    ax.tick_params(axis="x", labelsize=8)

    ax = axes[0][1]
    lat = f.get("latency_ms", {})
    width = 0.25
    for i, p in enumerate(("p50", "p95", "p99")):
        xs = [j + (i - 1) * width for j in range(len(lat))]
        ax.bar(
            xs, [lat[k][p] for k in lat], width, label=p, color=["#9ecae1", "#4292c6", "#08519c"][i]
        )
    ax.set_xticks(range(len(lat)), list(lat))
    ax.axhline(2, color="grey", ls=":", lw=1)
    ax.axhline(10, color="grey", ls="--", lw=1)
    ax.set_title("Pickup latency, commit → handler start (ms)")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    ing = f.get("ingest")
    if ing:
        _bars(
            ax,
            [
                "HTTP ceiling\n(no DB)",
                "taskq\nPOST /tasks",
                "pgbench\nINSERT_TASK",
                "taskq batch\n(tasks/s)",
            ],
            [
                ing["http_ceiling_req_per_s"],
                ing["single_req_per_s"],
                ing["db_insert_per_s"],
                ing["batch_tasks_per_s"],
            ],
            ["#7f7f7f", COLORS["taskq"], "#bcbd22", "#17becf"],
        )
        ax.set_yscale("log")
        ax.set_ylim(bottom=100)
    ax.set_title(
        f"API ingest at {results.get('ingest', {}).get('clients', '?')} clients (log scale)"
    )
    ax.tick_params(axis="x", labelsize=8)

    ax = axes[1][1]
    scale = f.get("scale_jobs_per_s", {})
    conds = ("empty", "queued", "finished")
    for i, k in enumerate(scale):
        xs = [j + (i - (len(scale) - 1) / 2) * width for j in range(len(conds))]
        ax.bar(xs, [scale[k].get(c, 0) for c in conds], width, label=k, color=COLORS[k])
    ax.set_xticks(
        range(len(conds)),
        [
            "empty",
            f"{f.get('scale_rows', 0):,} queued",
            f"{f.get('scale_rows', 0):,} finished",
        ],
    )
    ax.set_title("Throughput at scale (jobs/s)")
    ax.legend(fontsize=8)

    _flow(axes[0][2], f)
    axes[1][2].axis("off")

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
