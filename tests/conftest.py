"""Test-session settings: no test writes to the user's cache (``planner.localhost``)."""
import os
import tempfile

os.environ["PLANNER_CACHE_DIR"] = tempfile.mkdtemp(prefix="planner-test-cache-")
