"""gevent's monkey-patching, without importing importlib.metadata when no gevent plugin exists.

Runs first in the master, each preloader and each worker. gevent.monkey.patch_all() announces
every patch to zope.event subscribers and to plugins declared as entry points (groups named
`gevent.plugins.*`), which it looks up with importlib.metadata. Importing that (with email,
zipfile, csv, pathlib, tempfile...) costs a process about 3 MB for its whole life, although
almost no distribution declares such a plugin. `patch_all()` first looks for one the cheap
way, by reading the entry_points.txt of each distribution on sys.path: when there is none,
the lookup would find nothing, so it is skipped (subscribers are still notified, as gevent
does); when there is one, or a sys.path entry that could hide one (a zip file), gevent's own
patch_all runs unchanged and calls its plugins. gevent's own distribution declares one
(`gevent.monkey:_subscribe_signal_os`), which warns when signal is patched without os: with
patch_all()'s defaults both are, so it would do nothing and is not counted. Only the os
module is imported here: this runs before anything else is imported, so that everything
after sees patched modules.
"""

import os
import sys

PLUGIN_GROUP = "gevent.plugins."
METADATA_SUFFIXES = (".dist-info", ".egg-info")
# Plugins that do nothing when everything is patched (see above).
NO_OP_PLUGINS = {"gevent.monkey:_subscribe_signal_os"}


def declares_plugin(entry_points: str) -> bool:
    """True if the text of an entry_points.txt has an entry in a `gevent.plugins.` group
    that is not one of NO_OP_PLUGINS."""
    section = ""
    for line in entry_points.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[] ")
        elif section.startswith(PLUGIN_GROUP) and "=" in line:
            if line.partition("=")[2].replace(" ", "") not in NO_OP_PLUGINS:
                return True
    return False


def plugins_declared(path: list[str] | None = None) -> bool:
    """True if a distribution on `path` (sys.path) may declare a gevent plugin entry point:
    its entry_points.txt has one (`declares_plugin`), or an entry is a file (a zip, whose
    metadata this does not read)."""
    for entry in sys.path if path is None else path:
        directory = entry or "."
        try:
            names = os.listdir(directory)
        except NotADirectoryError:
            return True
        except OSError:
            continue    # missing or unreadable: importlib.metadata finds nothing there either
        for name in names:
            if name.endswith(".egg"):
                metadata = os.path.join(directory, name, "EGG-INFO")
            elif name.endswith(METADATA_SUFFIXES):
                metadata = os.path.join(directory, name)
            else:
                continue
            try:
                with open(os.path.join(metadata, "entry_points.txt"), "rb") as handle:
                    text = handle.read().decode("utf-8", "replace")
            except OSError:
                continue
            if PLUGIN_GROUP in text and declares_plugin(text):
                return True
    return False


def patch_all(**modules: bool) -> None:
    """gevent.monkey.patch_all(**modules), calling plugins by entry point only if any is
    declared."""
    from gevent import events, monkey

    lookup = getattr(events, "notify_and_call_entry_points", None)
    if lookup is None or plugins_declared():
        monkey.patch_all(**modules)
        return
    events.notify_and_call_entry_points = events.notify
    try:
        monkey.patch_all(**modules)
    finally:
        events.notify_and_call_entry_points = lookup
