"""Mutation check: do the tests notice realistic one-line bugs?

Each mutant in scripts/mutants.toml names a file, a snippet that occurs in it exactly once, its
replacement (the bug) and the test files (or test ids) that should notice. For every mutant the
script copies the repository's files (those git tracks, plus untracked ones it does not ignore)
into a temporary folder, applies the bug there, runs those tests and reports the mutant killed
(a test failed) or survived (all passed), with the tests that killed it and the seconds taken.
The working tree is never touched. The tests of every mutant are first run unmutated: a mutant
whose tests fail without it proves nothing and is reported as such.

    python scripts/mutants.py                  # every mutant
    python scripts/mutants.py --only cache     # mutants whose name contains "cache"
    python scripts/mutants.py --list

A development tool, not a CI step: run it before resolving an issue that touches the maths, and
add a mutant to the list with each feature. Exit status 1 when a mutant survives.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LIST = ROOT / "scripts" / "mutants.toml"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    verdict: str  # "killed", "survived", "killed (timeout)", "tests fail unmutated" or "stale: ..."
    seconds: float
    failed: tuple[str, ...]


def read_mutants(path: Path) -> list[Mutant]:
    with open(path, "rb") as handle:
        entries = tomllib.load(handle)["mutant"]
    return [Mutant(e["name"], e["file"], e["find"], e["replace"], tuple(e["tests"])) for e in entries]


def stale(mutant: Mutant) -> str | None:
    """Why the mutant no longer applies (the code changed under it), or None."""
    path = ROOT / mutant.file
    found = path.read_text().count(mutant.find) if path.is_file() else 0
    return None if found == 1 else f"stale: snippet found {found} times"


def copy_repository(target: Path) -> None:
    """The files a fresh clone would have, plus untracked ones not ignored (work in progress)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a deleted but still tracked file is skipped
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> Outcome:
    env = {**os.environ, "PYTHONPATH": str(copy), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Outcome("killed (timeout)", time.perf_counter() - started, ())
    seconds = time.perf_counter() - started
    failed = tuple(re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.MULTILINE))
    if result.returncode == 0:
        return Outcome("survived", seconds, ())
    if not failed:  # a collection error or a crash: show its end
        failed = (result.stdout.strip().splitlines() or ["(no output)"])[-1:]
    return Outcome("killed", seconds, failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list-file", type=Path, default=DEFAULT_LIST, help="the mutants (TOML)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run the mutants whose name contains TEXT (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per test run")
    args = parser.parse_args(argv)

    mutants = read_mutants(args.list_file)
    if args.only:
        mutants = [m for m in mutants if any(text.lower() in m.name.lower() for text in args.only)]
    if args.list or not mutants:
        for mutant in mutants:
            print(f"{stale(mutant) or 'ready'}: {mutant.name}  ({mutant.file}; {' '.join(mutant.tests)})")
        return 0

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as folder:
        copy = Path(folder)
        copy_repository(copy)
        baselines: dict[tuple[str, ...], Outcome] = {}
        for mutant in mutants:
            if stale(mutant):  # update its snippet in scripts/mutants.toml
                rows.append((mutant, Outcome(stale(mutant), 0.0, ())))
                continue
            if mutant.tests not in baselines:
                baseline = run_tests(copy, mutant.tests, args.timeout)
                if baseline.verdict != "survived":  # once more: a timing test may fail on a busy machine
                    flaky = baseline.failed
                    baseline = run_tests(copy, mutant.tests, args.timeout)
                    if baseline.verdict == "survived":
                        print(f"flaky without any bug (passed when run again): {', '.join(flaky)}", file=sys.stderr)
                baselines[mutant.tests] = baseline
            if baselines[mutant.tests].verdict != "survived":  # the tests fail without any bug
                outcome = Outcome("tests fail unmutated", 0.0, baselines[mutant.tests].failed)
            else:
                path = copy / mutant.file
                original = path.read_text()
                path.write_text(original.replace(mutant.find, mutant.replace))
                try:
                    outcome = run_tests(copy, mutant.tests, args.timeout)
                finally:
                    path.write_text(original)
            rows.append((mutant, outcome))
            print(f"{outcome.verdict:20s} {outcome.seconds:6.1f} s  {mutant.name}", file=sys.stderr, flush=True)

    killed = sum(outcome.verdict.startswith("killed") for _, outcome in rows)
    print("| mutant | file | result | s | caught by |\n|---|---|---|---|---|")
    for mutant, outcome in rows:
        names = [name.split("::")[-1] for name in outcome.failed]
        caught = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "") or "-"
        print(f"| {mutant.name} | {mutant.file} | {outcome.verdict} | {outcome.seconds:.1f} | {caught} |")
    print(f"\n{killed} of {len(rows)} mutants killed in {time.perf_counter() - started:.0f} s "
          f"(baseline runs included; python {sys.version.split()[0]}).")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
