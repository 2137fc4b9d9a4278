"""scripts/tuning_knobs.py: the launch-knob helper that GPU runs use to put a candidate kernel through the torch tests
and the report. It must refuse what it cannot set (a malformed spec, an unknown knob) instead of silently running
the defaults."""
import importlib.util
import os

import pytest

from arkernels import _library

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "tuning_knobs.py")


@pytest.fixture(scope="module")
def knobs():
    spec = importlib.util.spec_from_file_location("tuning_knobs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse(knobs):
    assert knobs._parse("") == []
    assert knobs._parse(" sscan_fwd_paired_bc=2 , ssu_rows=-1,") == [("sscan_fwd_paired_bc", 2), ("ssu_rows", -1)]
    with pytest.raises(ValueError, match="expected name=value"):
        knobs._parse("sscan_fwd_paired_bc")
    with pytest.raises(ValueError):
        knobs._parse("sscan_fwd_paired_bc=two")


def test_set_known_and_refuse_unknown(knobs):
    if not _library.native_available():
        pytest.skip("the native library is not built")
    assert knobs.apply("") is None
    try:
        assert "ssu_rows=0" in knobs.apply("ssu_rows=0")
        with pytest.raises(ValueError, match="does not know the knob 'no_such_knob'"):
            knobs.set_knob("no_such_knob", 1)
    finally:
        knobs.set_knob("ssu_rows", 0)
