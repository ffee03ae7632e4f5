"""`dpmsf package` and `sam build`: the Lambda artefact, built for the runtime's Python and CPU and checked there.

``artifact`` assembles the folder (and zip); ``dependencies`` fetches or copies the third-party code and keeps
only what the handler needs; ``target`` names the runtime and checks that the native code is for it.
Everything here is standard library plus pip, so any Python 3.11+ with pip can build (infra/Makefile).
"""

from __future__ import annotations

from .artifact import BUNDLED_PLUGINS, MARKER, Artifact, build, zip_folder
from .dependencies import RUNTIME_REQUIREMENTS, SANDBOX_REQUIREMENTS
from .target import LAMBDA_PLATFORM, LAMBDA_PYTHON, PROVIDED_BY_LAMBDA, PackagingError, Target, find_python

__all__ = [
    "BUNDLED_PLUGINS",
    "LAMBDA_PLATFORM",
    "LAMBDA_PYTHON",
    "MARKER",
    "PROVIDED_BY_LAMBDA",
    "RUNTIME_REQUIREMENTS",
    "SANDBOX_REQUIREMENTS",
    "Artifact",
    "PackagingError",
    "Target",
    "build",
    "find_python",
    "zip_folder",
]
