"""Fabric tasks that deploy apps onto hosts running railcar: `from railcar.deploy import ns`.

The tasks (setup, deploy, rollback, releases, status, restart, unlock) live in
railcar.deploy.tasks, which needs Fabric (`pip install 'railcar[deploy]'`). This package is
also installed on the hosts, where only railcar.deploy.probe runs, so Fabric is imported only
when `ns` is asked for.
"""


def __getattr__(name):
    if name == "ns":
        from .tasks import ns

        return ns
    raise AttributeError(name)
