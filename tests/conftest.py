"""Suite-wide settings.

Under CI (CI=true, as `.ci/run` is run) hypothesis is derandomized: the same
examples every run, so a landing never depends on a lucky draw. Locally it
explores new examples each run (and keeps failures in .hypothesis/).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
