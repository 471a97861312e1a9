"""Publishing a prepared release to a fleet: canary hosts, batches, a failure budget.

Every host is prepared before any publishes (pipeline.deploy). Then, with the settings of
the first host (fleet settings are the run's, not a host's):

    canary_hosts      the first N hosts publish first (in parallel) and are watched for
                      canary_watch seconds: every 2 s their health check must pass and every
                      worker must run the release; a canary that fails is put back on its
                      previous release by its own host and counts as a failed host
    batch_size        then the other hosts, that many at once (N, or "P%" of all hosts,
                      rounded up; default all at once), each batch once the last one ended
    failure_budget    how many hosts may fail (N, or "P%" of all hosts, rounded down;
                      default 0) before the deploy stops; a host that fails always restores
                      itself (its publish runs on the host)
    on_batch_failure  when the budget is exceeded, the hosts not yet published keep their
                      current release (the new one is marked failed there) and the hosts
                      already on the new release are put back on their previous release
                      ("rollback", the default: the fleet ends on one release) or left on
                      the new one ("keep")

Within the budget the deploy succeeds (exit 0) and names the hosts that failed, each back on
its previous release.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .pipeline import Host, Reporter, fail_before_swap, parallel, publish, revert
from .status import health_check
from .settings import DeployConfig, resolve_hosts

WATCH_INTERVAL = 2.0        # seconds between two checks of the canary hosts
WATCH_CHECK_TIMEOUT = 5     # seconds one check may wait for the health path


@dataclass
class Outcome:
    published: list[Host] = field(default_factory=list)   # on the new release now
    failed: dict[str, str] = field(default_factory=dict)  # host -> why (restored itself)
    reverted: list[str] = field(default_factory=list)     # published, then put back
    skipped: list[str] = field(default_factory=list)      # never published (budget spent)
    over_budget: bool = False

    @property
    def ok(self) -> bool:
        return not self.over_budget

    def summary(self, release: str) -> str:
        lines = []
        if self.over_budget:
            lines.append(f"deploy of {release} stopped: {len(self.failed)} host(s) failed, "
                         "more than the failure budget")
        else:
            lines.append(f"deployed {release} to {len(self.published)} host(s); "
                         f"{len(self.failed)} failed within the failure budget")
        for name, why in self.failed.items():
            lines.append(f"  failed, back on its previous release: {name}: {why}")
        if self.reverted:
            lines.append(f"  put back on the previous release (on_batch_failure: rollback): "
                         f"{', '.join(self.reverted)}")
        if self.skipped:
            lines.append(f"  not published, current unchanged: {', '.join(self.skipped)}")
        kept = [h.name for h in self.published]
        if self.over_budget and kept:
            lines.append(f"  left on {release} (on_batch_failure: keep): {', '.join(kept)}")
        return "\n".join(lines)


def plan(hosts: list[Host], config: DeployConfig) -> list[list[Host]]:
    """The batches, in order: the canary hosts, then groups of batch_size."""
    canaries = hosts[:config.canary_hosts]
    rest = hosts[config.canary_hosts:]
    size = resolve_hosts(config.batch_size, len(hosts), 1)
    batches = [canaries] if canaries else []
    batches += [rest[i:i + size] for i in range(0, len(rest), size)]
    return batches


def watch(hosts: list[Host], seconds: float, say) -> dict[str, str]:
    """Check the canary hosts every WATCH_INTERVAL for `seconds`; the ones that failed."""
    failed: dict[str, str] = {}
    deadline = time.monotonic() + seconds
    checks = 0
    while time.monotonic() < deadline and len(failed) < len(hosts):
        watched = [h for h in hosts if h.name not in failed]
        errors = parallel(watched, lambda h: health_check(
            h.remote, h.paths, h.config, h.release_dir, timeout=WATCH_CHECK_TIMEOUT))
        failed.update({name: str(exc).strip().splitlines()[-1] for name, exc in errors.items()})
        checks += 1
        time.sleep(max(0.0, min(WATCH_INTERVAL, deadline - time.monotonic())))
    say(f"canary watch: {checks} check(s) in {seconds:g}s, "
        + (f"failed: {', '.join(failed)}" if failed else "all healthy"))
    return failed


def publish_all(hosts: list[Host], config: DeployConfig, reporter: Reporter) -> Outcome:
    """Publish to every (prepared, locked) host by the plan. Never raises for a host's
    failure: the outcome says who is where. Hosts left unpublished are unlocked here; the
    others stay locked for the finish stages."""
    outcome = Outcome()
    budget = resolve_hosts(config.failure_budget, len(hosts), 0)
    batches = plan(hosts, config)
    for number, batch in enumerate(batches):
        if len(batches) > 1:
            reporter.line(f"batch {number + 1}/{len(batches)}"
                          + (" (canary)" if number == 0 and config.canary_hosts else "")
                          + f": {', '.join(h.name for h in batch)}")
        errors = parallel(batch, publish)
        for host in batch:
            if host.name in errors:
                outcome.failed[host.name] = str(errors[host.name]).strip().splitlines()[0]
            else:
                outcome.published.append(host)
        if number == 0 and config.canary_hosts and config.canary_watch:
            live = [h for h in batch if h.name not in errors]
            sick = watch(live, config.canary_watch, reporter.line) if live else {}
            for host in live:
                if host.name in sick:
                    revert(host, f"canary watch failed: {sick[host.name]}")
                    outcome.published.remove(host)
                    outcome.failed[host.name] = f"canary watch: {sick[host.name]}"
        if len(outcome.failed) > budget:
            outcome.over_budget = True
            for later in batches[number + 1:]:
                for host in later:
                    fail_before_swap(host)
                    outcome.skipped.append(host.name)
            if config.on_batch_failure == "rollback" and outcome.published:
                reason = f"the failure budget ({budget}) was exceeded"
                errors = parallel(outcome.published, lambda h: revert(h, reason))
                outcome.reverted = [h.name for h in outcome.published if h.name not in errors]
                outcome.published = [h for h in outcome.published if h.name in errors]
            break
    return outcome
