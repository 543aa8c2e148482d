"""Fixtures shared by the test modules (a module's own fixture of the same name wins)."""

from real_worker import worker  # noqa: F401 - a real worker process for one test
