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
