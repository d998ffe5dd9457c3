"""Collect score JSON files (``nar-caption-score --json-out``) into one markdown table.

    nar-caption-table runs/x/score_a.json runs/x/score_b.json ... [--out table.md]
"""

from ..files import atomic_write_text, check_output, load_json
from .common import add_overwrite_arg, parser, run_main

COMMAND = "nar-caption-table"
from .score import markdown_table


def main(argv=None):
    """The command's work; returns its result for callers in Python."""
    p = parser(__doc__, COMMAND)
    p.add_argument("results", nargs="+", help="score JSON files, one row each, in this order")
    p.add_argument("--out", help="also write the table here")
    add_overwrite_arg(p)
    a = p.parse_args(argv)
    if a.out:
        check_output(a.out, COMMAND, inputs=a.results, overwrite=a.overwrite)
    results = [load_json(path, "score") for path in a.results]
    table = markdown_table(results)
    print(table)
    if a.out:
        atomic_write_text(a.out, table + "\n", made_by=COMMAND)
    return table


def cli_main(argv=None) -> None:
    """Console entry: returns None (exit 0); a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, COMMAND)


if __name__ == "__main__":
    cli_main()
