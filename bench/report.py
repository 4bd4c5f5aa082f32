"""Run every benchmark in bench/ and write BENCHMARKS.md.

Each bench script measures its own baseline in the same run and prints the
ratios; this script only runs them one after another (never in parallel: they
would disturb each other's timing), captures what they print, and writes one
report with the machine it ran on and the command that reproduces each figure.

A bench that misses a target (non-zero exit) is reported as such; the report
is still written and this script still exits 0 — benchmarks are never a gate.

    python bench/report.py [--quick] [--only framing,line] [--output BENCHMARKS.md]

``--quick`` (or ``GRIDCTL_BENCH_QUICK=1``) runs every bench with small sizes,
to try the pipeline in a few minutes; the figures are then only indicative and
the report says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

# Scripts in bench/ that are not benchmarks of their own.
NOT_BENCHES = {"report.py", "soak.py"}


@dataclass(frozen=True, slots=True)
class Bench:
    script: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    # generous: cycle.py at its default size takes 10+ minutes on a loaded box
    timeout_s: float = 3600.0


# Arguments per bench. A script found in bench/ but not listed here runs with no
# arguments, so a new bench is in the report without touching this file.
KNOWN: dict[str, Bench] = {
    b.script: b
    for b in (
        Bench("framing.py"),
        Bench("bus.py", quick=("--seconds", "3")),
        Bench("control.py", quick=("--samples", "5", "--fifo-samples", "3")),
        Bench("cycle.py", quick=("--cycles", "3000")),
        Bench("deadline_timer.py", quick=("--samples", "300", "--cycles", "200")),
        Bench("line.py"),
        Bench("warehouse.py"),
        Bench("opcua.py", quick=("--quick", "--meters", "1000", "--naive-meters", "200")),
        Bench("hmi.py", quick=("--quick",)),
        # the soak is long by nature; the report runs a 10-minute one (30 by default by hand)
        Bench("soak.py", full=("--minutes", "10"), quick=("--minutes", "1"), timeout_s=7200.0),
    )
}

# Lines worth lifting into the summary: ratios, targets and verdicts (verdict words in
# capitals only, so "overruns" in a table header is not one).
KEY_LINE = re.compile(r"(?i:ratio|×|target|within|flatten|growth)|\d\s*x\b|\b(PASS|FAIL|OVER)\b")
# A target a bench reports as missed while still exiting 0.
MISSED = re.compile(r"\b(FAIL|OVER|MISSED|BELOW TARGET|STILL GROWING|LEAK)\b")
# Log records the benches' libraries print (asyncua, gridctl warnings): output, not figures.
LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)[ :]")


@dataclass(slots=True)
class Outcome:
    bench: Bench
    argv: list[str]
    returncode: int | None  # None: timed out
    seconds: float
    output: str
    load: float | None = None  # 1-minute load average when it started: other work on the box

    @property
    def status(self) -> str:
        if self.returncode == 0 and MISSED.search(self.output):
            return "ran; a target reported missed"
        return status(self.returncode)


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unavailable"


def machine() -> list[tuple[str, str]]:
    """What the figures depend on, as (name, value) rows."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    try:
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
        memory = f"{mem_kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = "unknown"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    commit = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return [
        ("CPU", model),
        ("cores", f"{os.cpu_count()} logical, {usable} usable by this process"),
        ("memory", memory),
        ("kernel", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("Rust", _run(["rustc", "--version"])),
        ("commit", commit + (" (with local changes)" if dirty else "")),
        ("load average at start (1, 5, 15 min)", load),
    ]


def benches(only: set[str] | None) -> list[Bench]:
    found = sorted(p.name for p in BENCH.glob("*.py") if p.name not in NOT_BENCHES)
    # the soak last: it is the longest and the least comparable with the rest
    found += [name for name in ("soak.py",) if (BENCH / name).exists()]
    out = [KNOWN.get(name, Bench(name)) for name in found]
    if only:
        out = [b for b in out if b.script.removesuffix(".py") in only]
    return out


def run(bench: Bench, quick: bool) -> Outcome:
    args = list(bench.quick if quick else bench.full)
    argv = [sys.executable, str(BENCH / bench.script), *args]
    print(f"== bench/{bench.script} {' '.join(args)}", flush=True)
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=bench.timeout_s,
        )
        code: int | None = proc.returncode
        output = proc.stdout
    except subprocess.TimeoutExpired as exc:
        code = None
        raw = exc.stdout or b""
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        output += f"\n[timed out after {bench.timeout_s:.0f} s]\n"
    elapsed = time.monotonic() - t0
    sys.stdout.write(output)
    print(f"-- {status(code)} in {elapsed:.0f} s", flush=True)
    return Outcome(bench, argv, code, elapsed, output, load)


def status(code: int | None) -> str:
    if code is None:
        return "timed out"
    return "targets met" if code == 0 else f"target missed or error (exit {code})"


def reproduce(outcome: Outcome) -> str:
    args = outcome.argv[2:]
    return shlex.join([".venv/bin/python", f"bench/{outcome.bench.script}", *args])


def render(
    outcomes: list[Outcome],
    rows: list[tuple[str, str]],
    quick: bool,
    started: str,
    note: str = "",
) -> str:
    lines = [
        "# gridctl benchmarks",
        "",
        "Every figure below is printed by a script in `bench/` that measures its own",
        "baseline (a naive implementation or a reference package) in the same run, on the",
        "same machine, so ratios are comparable across machines even where absolute",
        "numbers are not. Benchmarks are never a gate in CI.",
        "",
        "Regenerate with `make bench` (or `.venv/bin/python bench/report.py`); each bench's",
        "own command is given with its output.",
        "",
    ]
    if quick:
        lines += [
            "> **Quick mode** (`GRIDCTL_BENCH_QUICK=1`): reduced sizes and durations; the",
            "> figures are indicative only. Run `make bench` for the report of record.",
            "",
        ]
    lines += [f"Generated {started} UTC.", "", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    if note:
        lines += ["", f"Note on this run: {note}"]
    lines += [
        "",
        "## Summary",
        "",
        "| bench | result | wall time | key figures |",
        "|---|---|---|---|",
    ]
    for o in outcomes:
        # column-aligned tables read badly inside a cell: collapse the padding
        keys = [
            re.sub(r"\s{2,}", "  ", ln.strip())
            for ln in o.output.splitlines()
            if KEY_LINE.search(ln) and not LOG_LINE.match(ln)
        ]
        cell = "<br>".join(k.replace("|", "\\|") for k in keys[:8]) or "see below"
        lines.append(
            f"| [`{o.bench.script}`](#{o.bench.script.replace('.', '')}) | {o.status} "
            f"| {o.seconds:.0f} s | {cell} |"
        )
    for o in outcomes:
        lines += [
            "",
            f"## {o.bench.script}",
            "",
            f"Reproduce: `{reproduce(o)}` — {o.status}, {o.seconds:.0f} s"
            + ("." if o.load is None else f" (1-minute load average {o.load:.2f} at its start)."),
            "",
            "```text",
            o.output.rstrip("\n"),
            "```",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("GRIDCTL_BENCH_QUICK", "") not in ("", "0"),
        help="small sizes, for trying the pipeline (also GRIDCTL_BENCH_QUICK=1)",
    )
    ap.add_argument("--only", default="", help="comma-separated bench names, e.g. framing,line")
    ap.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--note", default="", help="a sentence on the run's conditions, for the report")
    args = ap.parse_args()
    only = {s.strip().removesuffix(".py") for s in args.only.split(",") if s.strip()} or None
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    rows = machine()  # before the runs: the load average is the one the benches started with
    outcomes = [run(b, args.quick) for b in benches(only)]
    args.output.write_text(render(outcomes, rows, args.quick, started, args.note))
    missed = [o.bench.script for o in outcomes if o.status != "targets met"]
    print(f"wrote {args.output}" + (f"; targets missed: {', '.join(missed)}" if missed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
