"""Render `railcar status` for people: one block per app, one row per worker."""

from __future__ import annotations

import os


def _size(value) -> str:
    if value is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _dash(value) -> str:
    return "-" if value is None else str(value)


COLUMNS = ("PID", "STATE", "RELEASE", "REQUESTS", "IN FLIGHT", "CPU%", "RSS", "UPTIME")


def render(status: dict) -> str:
    now = status["master"]["now"]
    lines = [f"railcar {status['master']['version']}  master pid {status['master']['pid']}  "
             f"up {_duration(now - status['master']['started_at'])}"]
    for app in status["apps"]:
        lines.append("")
        lines.append(f"{app['name']}  [{app['state']}]  {' '.join(app['binds'])}  "
                     f"root {app['root']}")
        lines.append(f"  release: {app['release'] or '-'}")
        restart = app.get("last_restart")
        if restart:
            outcome = "ok" if restart["ok"] else "FAILED"
            lines.append(f"  last restart: {outcome}, {_duration(now - restart['finished_at'])} ago")
        if app.get("error"):
            lines.append("  error: " + app["error"].replace("\n", "\n    "))
        rows = [COLUMNS] + [(
            _dash(w["pid"]), w["state"], os.path.basename(w["release"] or "") or "-",
            _dash(w.get("requests")), _dash(w.get("in_flight")),
            "-" if w.get("cpu") is None else f"{w['cpu']:.1f}", _size(w.get("rss")),
            _duration(now - w["started_at"])) for w in app["workers"]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    return "\n".join(lines)
