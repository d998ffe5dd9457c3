"""Collect score JSON files (``nar-caption-score --json-out``) into one markdown table.

    nar-caption-table runs/x/score_a.json runs/x/score_b.json ... [--out table.md]
"""
import argparse

from ..files import atomic_write_text, load_json
from .common import run_main
from .score import markdown_table


def main(argv=None):
    """The command's work; returns its result for callers in Python."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="score JSON files, one row each, in this order")
    p.add_argument("--out", help="also write the table here")
    a = p.parse_args(argv)
    results = [load_json(path, "score") for path in a.results]
    table = markdown_table(results)
    print(table)
    if a.out:
        atomic_write_text(a.out, table + "\n")
    return table


def cli_main(argv=None) -> None:
    """Console entry: returns None (exit 0); a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv)


if __name__ == "__main__":
    cli_main()
