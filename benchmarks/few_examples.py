"""A pytest plugin for slow runs (under compute-sanitizer): each hypothesis test tries only
a few examples. ``pytest -p few_examples`` with this folder on the path."""

from __future__ import annotations

from hypothesis import settings


def pytest_configure(config) -> None:  # after tests/conftest.py has loaded its profile
    settings.register_profile("few_examples", settings.default, max_examples=3)
    settings.load_profile("few_examples")
