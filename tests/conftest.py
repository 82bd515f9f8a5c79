"""Suite-wide settings. Fixtures live in tests/support/ and are imported where used."""

import os

from hypothesis import settings

# CI runs the property tests derandomized (a failure reproduces from one run to the next)
# and without an example database in the clone.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
