"""Outputs of a benchmark run besides the table on stdout: Markdown, JSON, a PNG bar chart.

Nothing here runs a benchmark; ``run.py`` hands over the rows, the raw results
and the medians to draw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The chart's panels: (key in the chart data, title, y-axis label).
PANELS = (
    ("framed", "Framed echo, 100 connections, K messages of 64 bytes per write", "messages/s"),
    ("resp", "redis-benchmark -c 50 (RESP)", "requests/s"),
    ("client", "One client, sequential 64-byte round trips", "round trips/s"),
)
#: Bar order and labels; servers not listed (the C ceiling) are left out of the chart.
SERIES = {
    "gtcp-framed": "gtcp framed",
    "gtcp": "gtcp",
    "gtcp-hand": "gtcp hand-buffered",
    "twisted": "Twisted",
    "uvloop-proto": "uvloop Protocol",
    "raw": "raw gevent",
    "asyncio": "asyncio streams",
    "asyncio-uvloop": "asyncio streams/uvloop",
    "uvloop": "asyncio streams/uvloop",
    "redis": "redis-server",
}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table (numbers right-aligned)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def write_markdown(
    path: Path,
    info: list[str],
    header: list[str],
    rows: list[list[str]],
    notes: list[str],
    title: str = "gtcp benchmark results",
) -> None:
    """The machine description, the table and the notes as a Markdown file."""
    text = f"# {title}\n\n" + "".join(f"* {line}\n" for line in info) + "\n"
    text += markdown_table(header, rows)
    if notes:
        text += "\n" + "".join(f"* {note}\n" for note in notes)
    path.write_text(text)


def write_json(path: Path, raw: dict[str, Any], chart: dict[str, Any]) -> None:
    """Every run's result and the medians, for later comparisons."""
    path.write_text(json.dumps({"runs": raw, "medians": chart}, indent=1, sort_keys=True))


def write_chart(
    path: Path,
    chart: dict[str, dict[str, dict[str, float]]],
    title: str,
    panels: tuple[tuple[str, ...], ...] = PANELS,
    series: dict[str, str] = SERIES,
) -> str | None:
    """Grouped bar charts, one panel per scenario that ran; None when written, else why not.

    ``panels``: (key in ``chart``, title, y-axis label[, tick format]); without a
    tick format the axis counts in thousands (``12k``). ``series``: bar order and labels.
    """
    panels = tuple(p for p in panels if chart.get(p[0]))
    if not panels:
        return "nothing to draw"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install -r benchmarks/requirements.txt)"
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3.4 * len(panels)), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (key, panel_title, unit, *tick) in zip(axes[:, 0], panels, strict=True):
        groups = chart[key]
        present = [s for s in series if any(s in values for values in groups.values())]
        # Within each group the bars it has are centred on its tick (no gaps for series it lacks).
        width = 0.8 / max(max(sum(s in values for s in present) for values in groups.values()), 1)
        places: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in present}
        for g, values in enumerate(groups.values()):
            here = [s for s in present if s in values]
            for j, name in enumerate(here):
                places[name][0].append(g + (j - (len(here) - 1) / 2) * width)
                places[name][1].append(values[name])
        for i, name in enumerate(present):
            xs, heights = places[name]
            bars = ax.bar(xs, heights, width, label=series[name], color=colors[i % len(colors)])
            if tick:
                ax.bar_label(bars, [tick[0].format(h) for h in heights], fontsize=7)
        ax.set_xticks(range(len(groups)), list(groups))
        ax.set_ylabel(unit)
        ax.set_title(panel_title, fontsize=10)
        if tick:
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _, f=tick[0]: f.format(v)))
        else:
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:,.0f}k"))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None
