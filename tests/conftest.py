"""Shared test settings: timeouts by role, and gtcp's own pytest plugin.

Timeouts by role (urllib3's convention): SHORT when something must time out,
LONG when it must not, PROCESS when it must not and waits on a child
interpreter (its start-up, a stop). Every test file takes them from here;
``helpers`` holds the shared services, paths, ``wait_until`` and
``child_env`` (the environment of a child that imports this checkout).

The fixtures are the ones gtcp ships to its users (``gtcp.testing`` through
the plugin ``_gtcp_pytest_plugin``): ``gtcp_listener``, ``gtcp_client``,
``gtcp_peer``, ``gtcp_pair``, ``gtcp_tls`` and ``gtcp_log``. Every test runs
under the plugin's gevent deadline (``gtcp_deadline`` in tox.ini: a readable
failure; STRESS_DEADLINE for tests marked ``stress``) and pytest-timeout (the
signal-method backstop, also configured in tox.ini).
"""

from __future__ import annotations

import sys

import pytest

SHORT = 0.2
LONG = 10.0
PROCESS = 20.0

#: The gevent deadline of tests marked ``stress`` (run with ``-m stress``).
STRESS_DEADLINE = 540.0

# The plugin comes from gtcp's pytest11 entry point once gtcp is installed
# (requirements.txt installs this checkout with -e .). From a checkout that is
# not installed (or installed before the entry point existed), with
# PYTEST_DISABLE_PLUGIN_AUTOLOAD set, or with -p no:gtcp, it is not loaded by
# then: load it here. Never both: pytest refuses one module registered under two
# names, and pytest has imported an entry-point plugin before any conftest.
pytest_plugins = ["pytester"]
if "_gtcp_pytest_plugin" not in sys.modules:
    pytest_plugins.append("_gtcp_pytest_plugin")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give the long stress runs their own deadline."""
    for item in items:
        if item.get_closest_marker("stress") and not item.get_closest_marker("gtcp_deadline"):
            item.add_marker(pytest.mark.gtcp_deadline(STRESS_DEADLINE))
