"""Fixtures of the worker tests: a Ray instance shared by a module's tests."""

from __future__ import annotations

import pytest
import ray


@pytest.fixture(scope="module")
def ray_cluster(isolated_env):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
