"""A registry that attacks the transport (issue 18, items 1, 4, 5, 6, 7, 10, 11, 16; issue 16 item 7):
credentials stay with the registry, bodies are read to their limits, slow or stalled transfers stop with a
message naming the object, Ctrl-C acts at once, and every HTTP failure has a documented exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptmpack.distribution import ClientOptions, PullOptions, pull
from ptmpack.distribution.registry import MAX_TAG_PAGES
from ptmpack.errors import PtmError
from tests._support.clirun import assert_clean_error, cli
from tests._support.hostile_registry import HostileRegistry, limited, served
from tests._support.registry import make_tls
from tests._support.trees import REPO
from tests.distribution.packages import pack_kind, write_model_tree

PTMPACK = [sys.executable, "-m", "ptmpack.cli"]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-transport-pkg")
    return pack_kind(write_model_tree(folder / "tree", rows=600), folder / "p.ptm", "raw")


def _ref(reg: HostileRegistry, tag: str = "v1") -> str:
    return f"{reg.host}/{reg.content.repository}:{tag}"


def _pull(reg: HostileRegistry, out: Path, *args: object, env: dict[str, str | None] | None = None) -> object:
    return cli("pull", _ref(reg), "-o", out, "--plain-http", *args, env=env)


def _no_output(folder: Path) -> None:
    assert not (folder / "out.ptm").exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".ptmpack")] == []


def test_credentials_never_reach_another_origin(package: Path, tmp_path: Path) -> None:
    """Item 1: blob GETs redirect to 127.0.0.2, which challenges with a token realm of its own."""
    with served(tmp_path / "layout", {"v1": package}, "redirect-auth") as reg:
        env = {"PTMPACK_REGISTRY_USER": reg.user, "PTMPACK_REGISTRY_PASSWORD": reg.password}
        run = _pull(reg, tmp_path / "out.ptm", env=env)
        other = reg.requests_to("other")
        main = reg.requests_to("main")
    assert other, "the redirect was never followed: the test proves nothing"
    assert [s for s in other if "authorization" in s.headers] == []
    assert [s for s in other if s.path.startswith("/token")] == []
    assert_clean_error(run, 4)  # type: ignore[arg-type]
    assert reg.other in run.err and "only to the registry" in run.err  # type: ignore[attr-defined]
    assert any("authorization" in s.headers for s in main)  # the registry itself did get them
    _no_output(tmp_path)


def test_token_request_redirected_elsewhere_loses_the_credentials(package: Path, tmp_path: Path) -> None:
    """Item 1: the registry's own token realm redirects to another origin."""
    with served(tmp_path / "layout", {"v1": package}, "realm-redirect") as reg:
        env = {"PTMPACK_REGISTRY_USER": reg.user, "PTMPACK_REGISTRY_PASSWORD": reg.password}
        run = _pull(reg, tmp_path / "out.ptm", env=env)
        other = reg.requests_to("other")
        main_token = [s for s in reg.requests_to("main") if s.path.startswith("/token")]
    assert other and main_token, "the token request was never redirected: the test proves nothing"
    assert all("authorization" in s.headers for s in main_token)  # the realm the registry named gets them
    assert [s for s in other if "authorization" in s.headers] == []
    assert run.code != 0  # type: ignore[attr-defined]


def test_https_to_http_redirect_is_refused(package: Path, tmp_path: Path) -> None:
    """Item 11: an HTTPS registry whose blob GETs redirect to plain HTTP."""
    tls = make_tls(tmp_path / "tls")
    with served(tmp_path / "layout", {"v1": package}, "downgrade", tls=tls) as reg:
        run = cli("pull", _ref(reg), "-o", tmp_path / "out.ptm", "--ca-file", tls.ca_file)
        other = reg.requests_to("other")
    assert_clean_error(run, 9)
    assert "refused a redirect from https to http" in run.err and reg.host in run.err
    assert other == []
    _no_output(tmp_path)


def test_gzip_bomb_manifest_is_read_only_to_its_limit(package: Path, tmp_path: Path) -> None:
    """Item 4: a manifest answered with 512 KiB of gzip that expands to 512 MiB."""
    with served(tmp_path / "layout", {"v1": package}, "gzip-bomb", bomb_bytes=512 << 20) as reg:
        code, err, rss_kib = limited([*PTMPACK, "pull", _ref(reg), "-o", str(tmp_path / "out.ptm"), "--plain-http"])
    assert rss_kib < 300 * 1024, f"peak RSS {rss_kib} KiB: the body was decoded whole"
    assert code == 3, err
    assert "larger than any manifest" in err and reg.host in err
    _no_output(tmp_path)


def test_zstd_bomb_is_refused_without_decoding_it(package: Path, tmp_path: Path) -> None:
    """Item 4: a manifest answered zstd-encoded (httpx decodes a whole network read at once: 64 KiB -> 1 GiB)."""
    with served(tmp_path / "layout", {"v1": package}, "zstd-bomb", bomb_bytes=1 << 30) as reg:
        code, err, rss_kib = limited([*PTMPACK, "pull", _ref(reg), "-o", str(tmp_path / "out.ptm"), "--plain-http"])
    assert rss_kib < 300 * 1024, f"peak RSS {rss_kib} KiB: the body was decoded"
    assert code == 9, err
    assert "Content-Encoding 'zstd'" in err and reg.host in err
    _no_output(tmp_path)


def test_token_service_bomb_is_refused_without_decoding_it(package: Path, tmp_path: Path) -> None:
    """Item 4: the token realm the registry names answers with a 1 GiB zstd body."""
    with served(tmp_path / "layout", {"v1": package}, "realm-bomb", bomb_bytes=1 << 30) as reg:
        code, err, rss_kib = limited([*PTMPACK, "pull", _ref(reg), "-o", str(tmp_path / "out.ptm"), "--plain-http"])
    assert rss_kib < 300 * 1024, f"peak RSS {rss_kib} KiB: the token body was decoded"
    assert code == 9, err
    assert reg.other in err
    _no_output(tmp_path)


def test_huge_error_body_is_not_read(package: Path, tmp_path: Path) -> None:
    """Item 4: a 400 answer with a 200 MiB body: the message comes from its first 64 KiB, the rest never moves."""
    with served(tmp_path / "layout", {"v1": package}, "huge-error", error_bytes=200 << 20) as reg:
        run = _pull(reg, tmp_path / "out.ptm")
        time.sleep(0.2)
        sent = reg.body_bytes_sent
    assert sent < 32 << 20, f"{sent} bytes of the error body were sent: the client kept reading"
    assert_clean_error(run, 9)  # type: ignore[arg-type]
    assert "HTTP 400" in run.err and reg.host in run.err  # type: ignore[attr-defined]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_cancels_a_stalled_transfer_at_once(package: Path, tmp_path: Path, signum: int) -> None:
    """Item 5: the registry stalls mid-blob; Ctrl-C / SIGTERM ends the pull within seconds, nothing left."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with served(tmp_path / "layout", {"v1": package}, "stall") as reg:
        proc = subprocess.Popen([*PTMPACK, "pull", _ref(reg), "-o", str(tmp_path / "out.ptm"), "--plain-http"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while not any(s.method == "GET" and "/blobs/" in s.path and reg.content.blobs.get(s.path.rsplit("/", 1)[1],
                          b"") and len(reg.content.blobs[s.path.rsplit("/", 1)[1]]) > reg.slow_over
                          for s in reg.requests_to("main")):
                assert time.monotonic() < deadline, "the pull never reached the large blob"
                time.sleep(0.05)
            time.sleep(0.5)  # the worker is now blocked reading the stalled body
            sent = time.monotonic()
            proc.send_signal(signum)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pytest.fail("the pull did not stop within 10 s of the signal")
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 128 + signum or proc.returncode == 130, proc.stderr.read()  # type: ignore[union-attr]
    assert took < 5, f"took {took:.1f} s to stop"
    _no_output(tmp_path)


def test_trickling_registry_hits_the_speed_limit(package: Path, tmp_path: Path) -> None:
    """Item 6: one byte every 0.2 s is far below 1000 bytes/s over 1.5 s: exit 9 naming the blob."""
    with served(tmp_path / "layout", {"v1": package}, "trickle", trickle_s=0.2) as reg:
        started = time.monotonic()
        run = _pull(reg, tmp_path / "out.ptm", "--speed-limit", "1000", "--speed-time", "1.5")
        took = time.monotonic() - started
    assert_clean_error(run, 9)  # type: ignore[arg-type]
    assert "too slow" in run.err and "blob sha256:" in run.err  # type: ignore[attr-defined]
    assert took < 15
    _no_output(tmp_path)


def test_pull_timeout_bounds_a_stalled_pull(package: Path, tmp_path: Path) -> None:
    """Item 6: --timeout 2 ends a pull whose blob stalls, naming the blob."""
    with served(tmp_path / "layout", {"v1": package}, "stall") as reg:
        started = time.monotonic()
        run = _pull(reg, tmp_path / "out.ptm", "--timeout", "2")
        took = time.monotonic() - started
    assert_clean_error(run, 9)  # type: ignore[arg-type]
    assert "2 s time limit" in run.err and "blob sha256:" in run.err  # type: ignore[attr-defined]
    assert took < 12
    _no_output(tmp_path)


def test_endless_tag_pagination_is_bounded(package: Path, tmp_path: Path) -> None:
    """Item 7: a tag list whose every page links a next one."""
    with served(tmp_path / "layout", {"v1": package}, "tag-pages") as reg:
        run = cli("ls", f"{reg.host}/{reg.content.repository}", "--plain-http")
        pages = len([s for s in reg.seen if "/tags/list" in s.path])
    assert_clean_error(run, 9)
    assert f"past {MAX_TAG_PAGES} pages" in run.err
    assert pages == MAX_TAG_PAGES


def test_unknown_tag_is_reported_after_one_tag_page(package: Path, tmp_path: Path) -> None:
    """Item 7: pull of an unknown tag reads one page of tags for its hint, not the whole endless list."""
    with served(tmp_path / "layout", {"v1": package}, "tag-pages") as reg:
        run = cli("pull", _ref(reg, "nope"), "-o", tmp_path / "out.ptm", "--plain-http")
        pages = len([s for s in reg.seen if "/tags/list" in s.path])
    assert_clean_error(run, 2)
    assert "nope" in run.err and pages == 1


@pytest.mark.parametrize(("mode", "words"), [
    ("bad-gzip", "does not decode"),
    ("redirect-loop", "more than 5 redirects"),
    ("bad-realm", "token service that is not a URL"),
])
def test_http_layer_failures_have_exit_9_and_name_the_registry(package: Path, tmp_path: Path, mode: str,
                                                                words: str) -> None:
    """Item 10: DecodingError, TooManyRedirects, InvalidURL were 'a bug' (exit 1)."""
    with served(tmp_path / "layout", {"v1": package}, mode) as reg:
        run = _pull(reg, tmp_path / "out.ptm")
    assert_clean_error(run, 9)  # type: ignore[arg-type]
    assert words in run.err and reg.host in run.err  # type: ignore[attr-defined]
    _no_output(tmp_path)


def test_unreachable_token_realm_is_named_not_the_registry(package: Path, tmp_path: Path) -> None:
    """Item 16: the registry answers; its token service does not."""
    with served(tmp_path / "layout", {"v1": package}, "dead-realm") as reg:
        run = _pull(reg, tmp_path / "out.ptm")
    assert_clean_error(run, 9)  # type: ignore[arg-type]
    assert "token service" in run.err and f"cannot reach {reg.host} " not in run.err  # type: ignore[attr-defined]


def test_busy_registry_exits_9_after_bounded_retries(package: Path, tmp_path: Path) -> None:
    """Issue 16 item 7: 503 on every request is a network failure (exit 9), after a bounded number of tries."""
    with served(tmp_path / "layout", {"v1": package}, "busy") as reg:
        with pytest.raises(PtmError) as caught:
            pull(_ref(reg), tmp_path / "out.ptm", PullOptions(client=ClientOptions(plain_http=True, retries=2)))
        tries = len(reg.seen)
    assert tries == 3
    assert caught.value.exit_code == 9 and "HTTP 503" in caught.value.message and reg.host in caught.value.message


def test_tls_to_a_plain_http_registry_suggests_plain_http(package: Path, tmp_path: Path) -> None:
    """Issue 16 item 7: speaking TLS to a plain-HTTP registry."""
    with served(tmp_path / "layout", {"v1": package}) as reg:
        run = cli("pull", _ref(reg), "-o", tmp_path / "out.ptm")
    assert_clean_error(run, 9)
    assert "--plain-http" in run.err and reg.host in run.err


def test_ls_of_a_repository_that_does_not_exist_exits_2(package: Path, tmp_path: Path) -> None:
    """Issue 16 item 7: it used to print 'no tags' and exit 0."""
    with served(tmp_path / "layout", {"v1": package}) as reg:
        run = cli("ls", f"{reg.host}/no/such-repo", "--plain-http")
    assert_clean_error(run, 2)
    assert f"{reg.host}/no/such-repo" in run.err and "no such repository" in run.err
