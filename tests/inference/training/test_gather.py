"""gather.py finds the Debian archive in the machine's apt sources (no host in the code)."""

import importlib.util
from pathlib import Path

import pytest

GATHER = Path(__file__).resolve().parents[3] / "inference/training/autoquality/gather.py"


@pytest.fixture(scope="module")
def gather():
    spec = importlib.util.spec_from_file_location("autoquality_gather", GATHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_main_archive_of_a_deb822_file_not_its_security_one(gather, tmp_path):
    folder = tmp_path / "sources.list.d"
    folder.mkdir()
    (folder / "debian.sources").write_text(
        "Types: deb\n"
        "# a comment naming http://elsewhere.example/debian\n"
        "URIs: http://security.mirror.test/debian-security\n"
        "Suites: bookworm-security\n\n"
        "Types: deb\n"
        "URIs: http://mirror.test/debian/\n"
        "Suites: bookworm bookworm-updates\n"
    )
    assert gather.debian_mirror((folder, tmp_path / "sources.list")) == "http://mirror.test/debian"


def test_a_one_line_sources_list_with_options(gather, tmp_path):
    listing = tmp_path / "sources.list"
    listing.write_text(
        "deb [signed-by=/usr/share/keyrings/debian.gpg] http://other.test/debian bookworm main\n"
    )
    assert gather.debian_mirror((tmp_path / "absent.d", listing)) == "http://other.test/debian"


def test_no_debian_archive_is_an_error_that_names_the_files_read(gather, tmp_path):
    listing = tmp_path / "sources.list"
    listing.write_text("deb http://archive.test/ubuntu noble main\n")
    with pytest.raises(RuntimeError, match="no Debian archive"):
        gather.debian_mirror((listing,))
