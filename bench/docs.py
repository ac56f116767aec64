"""Copy a run's tables into docs/benchmarks.md (`make bench-docs`).

Replaces what sits between the `bench:results` markers with bench/results/<name>.md, the
chart path rewritten relative to docs/. The prose around the markers (method, targets
discussion) is written by hand and left alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.config import RESULTS

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
START = "<!-- bench:results:start (bench/docs.py replaces this part) -->"
END = "<!-- bench:results:end -->"


def splice(doc: str, results_md: str, name: str) -> str:
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no {START} ... {END} markers")
    body = results_md.split("\n", 1)[1] if results_md.startswith("# ") else results_md
    body = body.replace(f"]({name}.png)", f"](../bench/results/{name}.png)")
    body = body.replace("\n## ", "\n### ")  # nest under the document's own section
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body.strip()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.docs", description=__doc__)
    parser.add_argument("--name", default="latest", help="which results (file stem)")
    args = parser.parse_args(argv)
    results_md = (RESULTS / f"{args.name}.md").read_text()
    DOC.write_text(splice(DOC.read_text(), results_md, args.name))
    print(f"{DOC}: tables from bench/results/{args.name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
