"""Configuration and limits are validated once, on load, with messages that say what to fix.

Method: examples of every rejected relationship between limits (DESIGN §15) and
of malformed user tables; a generated default config round-trips.
"""

from __future__ import annotations

import pytest

from common import config as configuration
from common.limits import Limits


@pytest.mark.parametrize("overrides", [
    {"EC_K": 200, "EC_M": 56},
    {"INLINE_MAX": 256 * 1024},
    {"CHUNK_MAX": 1000},
    {"COMMIT_DEADLINE_MS": 59_500},
    {"REAP_DELAY_MS": 10**12},
    {"MIN_PART_SIZE": 10 * 1024**3},
])
def test_inconsistent_limits_are_refused(overrides):
    with pytest.raises(ValueError):
        Limits(**overrides)


def test_unknown_limit_names_are_refused():
    with pytest.raises(ValueError, match="UNKNOWN"):
        Limits.from_mapping({"UNKNOWN": 1})


def test_default_config_round_trips(tmp_path):
    written = configuration.write_default(tmp_path / "cairn.toml")
    loaded = configuration.load(tmp_path / "cairn.toml")
    assert loaded.users == written.users
    assert len(loaded.users) == 1 and loaded.users[0].access_key.startswith("CAIRN")
    assert (tmp_path / "cairn.toml").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("text,message", [
    ("", "no \\[\\[users\\]\\]"),
    ("[[users]]\nname='a'\n", "needs name, access_key and secret_key"),
    ("[[users]]\nname='a'\naccess_key='AKIDEXAMPLE'\nsecret_key='short'\n", "shorter than 8"),
    ("[[users]]\nname='a'\naccess_key='AKID1'\nsecret_key='secret123'\n[[users]]\nname='b'\naccess_key='AKID1'\nsecret_key='secret456'\n", "duplicate"),
    ("[[users]]\nname='a'\naccess_key='AKID1'\nsecret_key='secret123'\n[limits]\nINLINE_MAX=1048576\n", "INLINE_MAX"),
    ("not toml [", "not valid TOML"),
])
def test_bad_configs_say_what_to_fix(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(configuration.ConfigError, match=message):
        configuration.load(path)
