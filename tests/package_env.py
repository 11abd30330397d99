"""The environment for a child process that must import the same lenet5_fast as the tests: the
installed package in CI (whose source tree has no built _C), the source tree in a dev build."""
import os
from pathlib import Path

import lenet5_fast

PACKAGE_ROOT = str(Path(lenet5_fast.__file__).resolve().parent.parent)


def package_env(**extra):
    """os.environ plus `extra`, with the imported package's root first on PYTHONPATH."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env
