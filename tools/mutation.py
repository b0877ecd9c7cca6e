"""Mutation testing of core/ and eventlog/ with cosmic-ray, against the fast tests.

    python tools/mutation.py core --sample 150 --seed 17       # a seeded sample of core's mutants
    python tools/mutation.py eventlog --modules eventlog/replay.py
    python tools/mutation.py core --sample 0                   # every mutant (hours on 2 cores)

cosmic-ray mutates the files IN PLACE (one mutant at a time, restored after
each run): run this in a clean checkout, not in a tree you are editing. It
writes `mutation-<target>.toml` and `mutation-<target>.sqlite` in the current
directory (a session resumes where it stopped), then prints every surviving
mutant as a diff and the score: killed / (killed + survived). Mutants that time
out count as killed (cosmic-ray's convention). Triage of survivors, and what
was run, is recorded in docs/fuzzing.md ("Mutation testing").

Not imported by natrelay; run with the dev extra installed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

#: The fast tests each mutant runs against (seconds each, no PostgreSQL, fixed Hypothesis seed).
FAST_TESTS = {
    "core": [
        "tests/unit/test_mutation_survivors.py",
        "tests/unit/test_values.py",
        "tests/unit/test_codec.py",
        "tests/unit/test_projections.py",
        "tests/unit/test_engine.py",
        "tests/unit/test_decider.py",
        "tests/unit/test_policy_and_lifecycle.py",
        "tests/unit/test_lifecycle_exhaustive.py",
        "tests/property/test_regressions.py",
        "tests/property/test_log_truth.py",
    ],
    "eventlog": [
        "tests/eventlog/test_verify_tampering.py",
        "tests/eventlog/test_eventlog_append_read.py",
        "tests/eventlog/test_eventlog_snapshots.py",
        "tests/unit/test_node.py",
        "tests/property/test_log_truth.py",
    ],
}


def _modules(target: str, chosen: list[str]) -> list[str]:
    if chosen:
        return chosen
    return sorted(str(p) for p in Path(target).glob("*.py") if p.name != "__init__.py")


def _config(target: str, modules: list[str], timeout: float) -> str:
    python = sys.executable
    tests = " ".join(FAST_TESTS[target])
    selection = ' -k "not postgresql"' if target == "eventlog" else ""
    command = f"{python} -m pytest -x -q -p no:cacheprovider --hypothesis-seed=1{selection} {tests}"
    return (
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(modules)}\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        '\n[cosmic-ray.distributor]\nname = "local"\n'
    )


def _sample(session: Path, size: int, seed: int) -> int:
    with sqlite3.connect(session) as db:
        done = {row[0] for row in db.execute("SELECT job_id FROM work_results")}
        ids = sorted(row[0] for row in db.execute("SELECT job_id FROM work_items"))
        if size and len(ids) > size:
            keep = set(random.Random(seed).sample(ids, size)) | done
            dropped = [(i,) for i in ids if i not in keep]
            db.executemany("DELETE FROM mutation_specs WHERE job_id = ?", dropped)
            db.executemany("DELETE FROM work_items WHERE job_id = ?", dropped)
        return len(ids)


def report(session: Path) -> tuple[int, int, int]:
    """Print the survivors; return (killed, survived, pending)."""
    with sqlite3.connect(session) as db:
        rows = list(db.execute("SELECT test_outcome, diff FROM work_results"))
        total = db.execute("SELECT count(*) FROM work_items").fetchone()[0]
    killed = sum(1 for outcome, _ in rows if outcome in ("KILLED", "INCOMPETENT"))
    survivors = [diff for outcome, diff in rows if outcome == "SURVIVED"]
    for diff in survivors:
        print(diff)
    return killed, len(survivors), total - len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=sorted(FAST_TESTS))
    parser.add_argument("--modules", nargs="*", default=[], help="files to mutate (default: all of target)")
    parser.add_argument("--sample", type=int, default=150, help="mutants to run, seeded; 0 = all")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    for path in args.modules:
        if not Path(path).is_file():
            print(f"mutation: no such module file {path!r}", file=sys.stderr)
            return 2
    config = Path(f"mutation-{args.target}.toml")
    session = Path(f"mutation-{args.target}.sqlite")
    cosmic = [sys.executable, "-m", "cosmic_ray.cli"]
    env = {**os.environ, "XDG_CACHE_HOME": str(Path(f".mutation-cache-{args.target}").resolve())}
    if not args.report_only:
        if not session.exists():
            config.write_text(_config(args.target, _modules(args.target, args.modules), args.timeout))
            subprocess.run([*cosmic, "init", str(config), str(session)], check=True, env=env)
            total = _sample(session, args.sample, args.seed)
            print(f"{total} mutants; running {min(total, args.sample) if args.sample else total}")
        subprocess.run([*cosmic, "exec", str(config), str(session)], check=True, env=env)
    killed, survived, pending = report(session)
    ran = killed + survived
    score = 100.0 * killed / ran if ran else 0.0
    print(f"{args.target}: {killed} killed, {survived} survived, {pending} not run: score {score:.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
