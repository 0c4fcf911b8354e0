"""The README documents every setting, and documents nothing that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

from imagesvc.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_config_table_matches_settings():
    documented = set(re.findall(r"^\| `(IMAGESVC_[A-Z0-9_]+)` \|", README, flags=re.M))
    expected = {f"IMAGESVC_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_every_documented_error_reason_exists():
    from imagesvc import errors

    reasons = {
        cls.reason
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ImageSvcError)
    } - {"INTERNAL"}
    error_table = README.split("### Errors", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"^\| [A-Z_]+ \| `([A-Z_]+)` \|", error_table, flags=re.M))
    assert documented == reasons
