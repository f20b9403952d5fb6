"""Run the CLI the two ways a user does: in process through ``ptmpack.cli.main``, and as a real program."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

from click.testing import CliRunner

from ptmpack.cli import main
from tests._support.trees import REPO


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> object:
        """stdout parsed as exactly one JSON document (json.loads refuses anything after it)."""
        return json.loads(self.out)


def cli(*args: object, env: dict[str, str | None] | None = None) -> Run:
    """Run ``ptmpack.cli.main`` in process with captured streams; return its exit code and output."""
    runner = CliRunner()
    with runner.isolation(env=env) as (out, err, _mixed):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        else:
            code = 0
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    return Run(code, out.getvalue().decode(), err.getvalue().decode())


def sub(*args: object, env: dict[str, str] | None = None, program: list[str] | None = None) -> Run:
    """Run the real program in a subprocess."""
    cmd = (program or [sys.executable, "-m", "ptmpack.cli"]) + [str(a) for a in args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO,
                          timeout=120, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_clean_error(run: Run, code: int) -> None:
    """Exit ``code``, a ``ptmpack: error:`` message on stderr, no traceback; on stdout nothing, or (with
    ``--json``) exactly the one failure document that names the same exit code."""
    assert run.code == code, (run.code, run.err)
    if run.out:
        doc = run.json()
        assert isinstance(doc, dict) and doc["ok"] is False and doc["error"]["exit_code"] == code, doc
    assert "Traceback" not in run.err
    assert "ptmpack: error:" in run.err, "no message"


def on_terminal(*args: object, stream: str = "stdout", env: dict[str, str] | None = None
                ) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Run ``python -m ptmpack.cli ARGS`` with ``stream`` (``stdout`` or ``stderr``) on a pseudo-terminal and
    the other piped; return the process and what the terminal received (decoded, escapes kept)."""
    import pty
    import select

    master, slave = pty.openpty()
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: slave}
    try:
        proc = subprocess.run([sys.executable, "-m", "ptmpack.cli", *map(str, args)], cwd=REPO, timeout=120,
                              check=False, env={**os.environ, **(env or {})}, **pipes)
        os.close(slave)
        slave = -1
        chunks = []
        while select.select([master], [], [], 2)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    return proc, b"".join(chunks).decode("utf-8", "replace")
