"""Fixtures of the worker tests: this process joins the session's shared Ray head (tests/helpers.py)."""

from __future__ import annotations

import pytest
import ray

from helpers import shared_ray_env


@pytest.fixture(scope="module")
def ray_cluster(isolated_env):
    ray.init(address=shared_ray_env()["RAY_ADDRESS"], log_to_driver=False)
    yield
    ray.shutdown()
