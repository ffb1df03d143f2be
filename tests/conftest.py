"""Shared test helpers."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

#: The one rule for parts a test needs (the engine, PyTorch, Slurm, a tool): where they are
#: required - in CI (CI set, as .ci/run runs) or with CAFFE_CAE_REQUIRE_ENGINE=1 - a missing
#: part FAILS the test; elsewhere the test is skipped with the reason.
REQUIRED = os.environ.get("CAFFE_CAE_REQUIRE_ENGINE") == "1" or bool(os.environ.get("CI"))


def missing(why):
    """A part this test needs is missing: fail where parts are REQUIRED, else skip."""
    if REQUIRED:
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


@pytest.fixture
def repo_root():
    return REPO
