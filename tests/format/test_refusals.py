"""Outputs the environment refuses (issue 18, item 16): exit 8 with a message that names the user's path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ptmpack.errors import EnvironmentFault
from ptmpack.format.atomic import check_free_space
from tests._support.clirun import assert_clean_error, cli
from tests.distribution.packages import pack_kind, write_model_tree


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("refusals")
    return pack_kind(write_model_tree(folder / "tree", rows=100), folder / "p.ptm", "raw")


@pytest.mark.skipif(not os.path.isdir("/proc/sys"), reason="needs Linux /proc/sys (a folder that creates no files)")
def test_output_in_a_folder_that_creates_no_files_exits_8(package: Path) -> None:
    for args in (("pack", package.parent / "tree", "-o", "/proc/sys/x.ptm"), ("unpack", package, "-o", "/proc/sys/x"),
                 ("pull", f"oci:{package.parent}/none:v1", "-o", "/proc/sys/x.ptm")):
        if args[0] == "pull":
            cli("push", package, args[1])
        run = cli(*args)
        assert_clean_error(run, 8)
        assert str(args[-1]) in run.err and ".ptmpack-tmp-" not in run.err, run.err


def test_free_space_check_adds_up_one_file_system(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    check_free_space({tmp_path / "a": free // 4, tmp_path / "not" / "yet": free // 4})
    with pytest.raises(EnvironmentFault) as caught:
        check_free_space({tmp_path / "a": free // 2 + 1, tmp_path / "not" / "yet": free // 2 + 1})
    assert str(tmp_path / "a") in caught.value.message and str(tmp_path / "not" / "yet") in caught.value.message
