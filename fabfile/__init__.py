"""This repo's own deploy: the example Flask app (examples/flaskapp) onto hosts running railcar.

    fab -H deploy@web1 setup       # once per host (idempotent)
    fab -H deploy@web1 deploy      # every release
    fab -H deploy@web1 releases | status | rollback | restart

Settings are in ../fabric.yaml under `railcar:`; this file only adds the repo's own tasks to
the ones railcar.deploy provides.
"""

from invoke import Collection, task

from railcar.deploy import ns as railcar_ns


@task
def wheel(c):
    """Build railcar's wheel into dist/ (what `setup` and `deploy` upload to the hosts)."""
    c.run("python -m pip wheel --no-deps --wheel-dir dist .")


ns = Collection(wheel)
for name, railcar_task in railcar_ns.tasks.items():
    ns.add_task(railcar_task, name)
ns.configure(railcar_ns.configuration())
