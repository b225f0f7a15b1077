"""The suite's own rules, checked on a throwaway suite that uses the real conftest."""

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.fixture
def suite(pytester):
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(test_one="""
import pytest

def test_runs():
    pass

def test_needs_data():
    pytest.skip("SST-2 not found at /nowhere")
""")
    return pytester


@pytest.mark.parametrize("ci, status", [("true", 1), ("", 0)])
def test_a_skip_fails_the_run_under_ci_and_is_listed_otherwise(suite, monkeypatch, ci, status):
    monkeypatch.setenv("CI", ci)
    result = suite.runpytest_subprocess("-rs")
    assert result.ret == status
    output = result.stdout.str()
    assert "SKIPPED [1] test_one.py" in output and "SST-2 not found at /nowhere" in output
    assert ("CI: 1 skipped test(s), which fails the run:" in output) == (ci == "true")
    assert ("test_one.py::test_needs_data: SST-2 not found at /nowhere" in output) == (ci == "true")


def test_an_allowed_skip_does_not_fail_the_run_under_ci(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(test_one="""
import pytest

def test_upstream():
    pytest.skip("SCIPY_ARRAY_API is not set: not checking array_api input")
""")
    monkeypatch.setenv("CI", "true")
    assert pytester.runpytest_subprocess().ret == 0
