"""``gridctl results export BATCH``: a batch's results as CSV or JSON."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from controller.verification.results import RepositoryError, ResultsRepository


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("results", help="verification results")
    sub = parser.add_subparsers(dest="results_command", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="export one batch's results")
    export.add_argument("batch", metavar="BATCH", help="batch id")
    export.add_argument(
        "--db",
        default="var/journal.sqlite",
        help="journal file of the service (default: %(default)s, the demo journal)",
    )
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    export.set_defaults(func=export_command)


def export_command(args: argparse.Namespace) -> int:
    db = Path(args.db)
    if not db.exists():
        print(f"--db: no such journal file {str(db)!r}", file=sys.stderr)
        return 2
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        repo = ResultsRepository(conn, install=False)
        text = repo.export_csv(args.batch) if args.format == "csv" else repo.export_json(args.batch)
    except (RepositoryError, sqlite3.OperationalError) as exc:
        print(f"results export: {exc}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:  # not SQLite at all, or damaged
        print(f"--db: {str(db)!r} is not a gridctl journal ({exc})", file=sys.stderr)
        return 2
    finally:
        conn.close()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
