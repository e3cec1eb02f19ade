"""quotaflow's HTTP functions, for functions-framework and any host that deploys it:

    functions-framework --source=functions/main.py --target=execute

Every target (``health``, ``openapi``, ``estimate``, ``execute``, ``track``, ``reserve``,
``release``, ``check_quota``, ``quota_status``, ``records``, ``usage_stats``, ``dashboard``)
lives in the installed ``quotaflow`` package (``pip install 'quotaflow[functions]'``); this file
only re-exports them. ``quotaflow serve`` hosts them all on one port.
"""

from quotaflow.server.targets import *  # noqa: F403
