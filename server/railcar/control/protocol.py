"""The admin socket protocol.

A unix stream socket, mode 0600 (owner only). Framing: one JSON object per line (UTF-8).
The client sends one request and reads lines until the final one:

    -> {"command": "status", "args": {}}
    <- {"event": "progress", "message": "..."}     zero or more, while a command runs
    <- {"ok": true, "result": {...}}                 final line on success
    <- {"ok": false, "error": "one line", "detail": "multi-line text, e.g. a traceback"}

Commands (args in parentheses):
    ping                  -> {"pid", "version", "started_at"}
    status                -> {"master": {...}, "apps": [{"name", "root", "release", "state",
                              "error", "last_restart", "restarts", "replacements",
                              "last_replacement", "wanted_workers", "min_workers",
                              "max_workers", "canary", "canaries", "health",
                              "health_failures", "canary_settings",
                              "workers": [{"pid", "release", "state",
                              "requests", "in_flight", "long_lived", "connections",
                              "evicted", "started_at", "rss",
                              "uss", "cpu",
                              "replacing", "canary"}], "spawn_method",
                              "preloaders": [{"pid", "release", "state", "current"}]}]}
    requests (app)        -> {"requests": [{"app", "worker", "method", "path", "client",
                              "age"}]}: every request in flight, oldest first
    restart (app)         -> {"apps": [{"name", "ok", "release", "error", "canary", ...}]};
                              blocks until done (progress lines tell how a canary goes); ok
                              is false on the final line if any app failed
    A canary (status "canary": the one watched now or the last one; restart "canary": this
    restart's, or null) is {"state": "watching"|"passed"|"failed", "pid", "release",
    "started_at", "finished_at", "duration", "seconds_left", "beside", "requests", "errors",
    "error_rate", "min_requests", "max_error_rate", "judged", "reason"}; "canaries" counts
    verdicts by state. "health" is the app's check ({"path", "host", "statuses", "timeout"})
    or null, "health_failures" counts new workers that failed it, "canary_settings" holds
    canary_duration, canary_min_requests and canary_max_error_rate.
    stop (graceful=true)  -> {"pid"}; the master then stops (the client waits for the pid)
    backtraces (app, worker) -> {"workers": [{"app", "pid", "text"}]}
"""

COMMANDS = ("ping", "status", "requests", "restart", "stop", "backtraces")


def request(command: str, **args) -> dict:
    return {"command": command, "args": {k: v for k, v in args.items() if v is not None}}


def success(result: dict) -> dict:
    return {"ok": True, "result": result}


def failure(error: str, detail: str | None = None, result: dict | None = None) -> dict:
    message = {"ok": False, "error": error}
    if detail:
        message["detail"] = detail
    if result is not None:
        message["result"] = result
    return message
