"""Progress on stderr for every long command: plain lines in a log (not a terminal), nothing with --progress none,
binary units everywhere; results stay on stdout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests._support.clirun import cli, on_terminal
from tests._support.trees import FIXTURES

PLAIN = re.compile(r"^ptmpack: (?P<label>[a-z ]+): .*(B|KiB|MiB|GiB)\b")


@pytest.fixture
def packages(tmp_path: Path) -> dict[str, Path]:
    tree = tmp_path / "tree"
    assert cli("init", tree, "--from-hf", FIXTURES / "tiny-bert").code == 0
    pkg = tmp_path / "m.ptm"
    assert cli("pack", tree, "-o", pkg, "--compress", "zstd", "--progress", "none").code == 0
    return {"tree": tree, "pkg": pkg, "root": tmp_path}


def _labels(err: str) -> set[str]:
    found = set()
    for line in err.splitlines():
        m = PLAIN.match(line)
        assert m, f"not a plain progress line: {line!r}"
        found.add(m["label"])
    return found


def test_every_byte_moving_command_prints_plain_lines_in_a_log(packages: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    tree, pkg, root = packages["tree"], packages["pkg"], packages["root"]
    ref = f"oci:{root / 'layout'}:v1"
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))  # never the user's cache
    runs = {
        "packing": cli("pack", tree, "-o", root / "p.ptm"),  # auto: stderr is not a terminal here
        "unpacking": cli("unpack", pkg, "-o", root / "u", "--progress", "plain"),
        "verifying": cli("verify", pkg, "--progress", "plain"),
        "diffing": cli("diff", pkg, tree, "-o", root / "d.ptm", "--progress", "plain"),
        "applying": cli("apply", pkg, root / "d.ptm", "-o", root / "n.ptm", "--progress", "plain"),
        "uploading": cli("push", pkg, ref, "--progress", "plain"),
        "verifying ": cli("pull", ref, "-o", root / "pulled.ptm", "--progress", "plain"),  # a layout: no download
    }
    for label, run in runs.items():
        assert run.code == 0, (label, run.err)
        assert label.strip() in _labels(run.err), (label, run.err)
        assert run.out.strip() and "ptmpack:" not in run.out  # results on stdout, progress never there
        assert not re.search(r"\((1[1-9]\d|[2-9]\d\d)%\)", run.err), run.err  # never past 100 %
        # a phase that announced a total announced what it counts: it ends at 100 %, not in a "done" line
        with_total = set(re.findall(r"^ptmpack: ([a-z ]+): .* of .*%\)", run.err, re.M))
        assert not with_total & set(re.findall(r"^ptmpack: ([a-z ]+): done", run.err, re.M)), (label, run.err)
    assert "hashing" in _labels(runs["uploading"].err)


def test_progress_none_and_bar(packages: dict[str, Path]) -> None:
    pkg = packages["pkg"]
    quiet = cli("verify", pkg, "--progress", "none")
    assert quiet.code == 0 and quiet.err == ""
    env_quiet = cli("verify", pkg, env={"PTMPACK_PROGRESS": "none"})
    assert env_quiet.code == 0 and env_quiet.err == ""
    forced = cli("verify", pkg, "--progress", "bar")  # rich bars even into a pipe, when asked
    assert forced.code == 0 and forced.out.startswith("OK")
    assert cli("verify", pkg, "--progress", "loud").code == 2


def test_json_keeps_progress_on_stderr(packages: dict[str, Path]) -> None:
    run = cli("verify", packages["pkg"], "--json", "--progress", "plain")
    assert run.code == 0 and run.json()["ok"] is True  # stdout is exactly the document
    assert "verifying" in _labels(run.err)


def _phase_total(err: str, label: str) -> str | None:
    """The total (``OF`` in ``N of OF (P%)``) of ``label``'s plain lines, or None when the phase gave up its estimate."""
    totals = {m[1] for m in re.finditer(rf"^ptmpack: {label}: .* of (\S+ \S+) \(\d+%\)", err, re.M)}
    assert len(totals) <= 1, err
    return totals.pop() if totals else None


def test_pull_verifying_counts_to_the_total_it_announced(packages: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Pull's "verifying" phase announces the bytes its checks count (a zstd package's raw entry bytes, as
    ``verify`` does), not the file size: it ends at 100 %, never in a "done" line that gave up the estimate."""
    pkg, root = packages["pkg"], packages["root"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    ref = f"oci:{root / 'layout'}:v1"
    assert cli("push", pkg, ref, "--progress", "none").code == 0
    pulled = cli("pull", ref, "-o", root / "pulled.ptm", "--progress", "plain")
    assert pulled.code == 0, pulled.err
    verified = cli("verify", pkg, "--progress", "plain")
    total = _phase_total(pulled.err, "verifying")
    assert total is not None and total == _phase_total(verified.err, "verifying")
    assert f"{total} of {total} (100%)" in pulled.err and "verifying: done" not in pulled.err, pulled.err


def test_a_phase_that_counts_nothing_prints_nothing(packages: dict[str, Path]) -> None:
    """verify --pubkey of an encrypted package reads no entry: no "verifying: done, 0 B" line in the log."""
    root = packages["root"]
    assert cli("keygen", "--type", "symmetric", "-o", root / "k").code == 0
    assert cli("keygen", "--type", "ed25519", "-o", root / "sig").code == 0
    enc = root / "enc.ptm"
    assert cli("pack", packages["tree"], "-o", enc, "--encrypt", "--key-file", root / "k.key", "--sign-key",
               root / "sig.key", "--progress", "none").code == 0
    run = cli("verify", enc, "--pubkey", root / "sig.pub", "--progress", "plain")
    assert run.code == 0 and run.err == "", run.err
    opened = cli("verify", enc, "--key-file", root / "k.key", "--progress", "plain")
    assert opened.code == 0 and "verifying" in _labels(opened.err)


def test_bars_on_a_terminal_speak_binary_units(packages: dict[str, Path]) -> None:
    """On a terminal (stderr a pty) the bars' sizes and speed are KiB, MiB (never rich's decimal kB/s, MB/s)."""
    proc, err = on_terminal("pack", packages["tree"], "-o", packages["root"] / "tty.ptm", "--compress", "zstd",
                            stream="stderr", env={"COLUMNS": "120"})
    assert proc.returncode == 0 and "packing" in err, err
    assert re.search(r"\d (B|KiB|MiB|GiB)/s", err), err
    assert not re.search(r"\d (kB|MB|GB)/s", err), err
