"""Start-up cost of the CLI, side by side with the floor it sits on (``python -c "import click"``).

    python bench/bench_startup.py [--runs 9] [--package PKG.ptm]

Every CI step that runs ptmpack pays start-up once per call. Runs alternate between the
commands in one loop, so load on the machine hits all of them alike; the table gives
medians and the ratio to ``import click``. ``inspect --json`` runs on ``--package`` (default:
the MiniLM package packed here) to show what a reading command costs in total.
Writes bench/out/startup.md and bench/out/startup.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
BIN = Path(sys.executable).parent


def _package() -> Path:
    out = common.TMP / "startup-minilm.ptm"
    if not out.exists():
        tree = common.hf_tree("minilm", common.minilm_checkpoint())
        common.run_cmd([str(BIN / "ptmpack"), "pack", str(tree), "-o", str(out)])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--package", type=Path)
    args = ap.parse_args(argv)
    common.TMP.mkdir(parents=True, exist_ok=True)
    package = args.package or _package()
    commands = {
        "python -c 'import click'": [sys.executable, "-c", "import click"],
        "ptmpack --version": [str(BIN / "ptmpack"), "--version"],
        "ptmpack --help": [str(BIN / "ptmpack"), "--help"],
        f"ptmpack inspect --json ({package.name})": [str(BIN / "ptmpack"), "inspect", str(package), "--json"],
        f"ptmpack verify --json ({package.name})": [str(BIN / "ptmpack"), "verify", str(package), "--json"],
    }
    series = {name: common.Series() for name in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            series[name].add(common.run_cmd(cmd))
    floor = series["python -c 'import click'"].median()
    rows = ["| command | median (s) | range (s) | ratio to import click |", "|---|---:|---:|---:|"]
    for name, s in series.items():
        rows.append(f"| `{name}` | {s.median():.3f} | {s.spread()} | {s.median() / floor:.2f} |")
    table = "\n".join(rows)
    print(table)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "startup.md").write_text(table + "\n")
    (OUT / "startup.json").write_text(json.dumps({k: v.to_json() for k, v in series.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
