# The source file functions-framework loads for `quotaflow serve` (it needs a path): the
# targets themselves live in quotaflow.server.targets.
from quotaflow.server.targets import *  # noqa: F403
