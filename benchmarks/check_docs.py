"""Check every number in README.md and docs/*.md that cites a result file against that file.

    python benchmarks/check_docs.py            # exit 0: every cited number matches; 1: the mismatches, one a line
    python benchmarks/check_docs.py --list     # also print every checked number with its value

The citation convention (invisible when the Markdown is rendered):

    <!-- results: repro/report.json -->        sets the file (under benchmarks/results/) for the cites after it,
                                               until the next such line or the end of the document
    0.57<!--=single.formality.targets.0.achieved-->          a number followed by a cite: the value at that key
    1.43x<!--=strong/steps96_effects.csv:[scorer=embedding-sentiment].change / repro/effects.csv:[...].change-->
    **29 %**<!--=single.sentiment.mae_fraction_of_range * 100-->

A cite is an expression of operands joined by ` / `, ` * `, ` - ` or ` + ` (evaluated left to right); an operand is
a number, `[FILE:]KEY` or `mean([FILE:]KEY)` (the mean of a list's numbers, nulls left out). A KEY is a dotted
path: a name (a dict key), an integer (a list index), a slice `a:b` of a list, or `[f=v,g=w]` (the list element
whose fields equal those values). A .csv or .csv.gz file is a list of rows (numbers parsed).
Between the number and its cite only a unit may stand (`%`, `x`, `s`, `ms`, bold `**`). The quoted number must
equal the value rounded to the quoted number of decimals (so 0.57 holds for 0.565 <= v <= 0.575). Every path under
benchmarks/results/ that a document names must exist as well.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import operator
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/results"
FILE_DIRECTIVE = re.compile(r"<!--\s*results:\s*(\S+)\s*-->")
CITE = re.compile(r"(?<![\w.])(?P<num>(?:(?<![^\s(\[|*])[-+−])?\d[\d,]*(?:\.\d+)?)(?P<unit>(?:\s?(?:%|x|ms|s|MiB|GiB))?\**)<!--=(?P<cite>.*?)-->")
NAMED_PATH = re.compile(r"benchmarks/results/[\w./*-]*[\w*]")
KEY_PART = re.compile(r"\[[^\]]*\]|[^.\[\]]+")
OPERATOR = re.compile(r"\s+([/*+-])\s+")
OPERATIONS = {"/": operator.truediv, "*": operator.mul, "+": operator.add, "-": operator.sub}


class CiteError(ValueError):
    """A cite that cannot be resolved (no such file or key)."""


def documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def load(path: Path, cache: dict) -> object:
    if path not in cache:
        if not path.is_file():
            raise CiteError(f"no result file {path}")
        if path.name.endswith((".csv", ".csv.gz")):
            raw = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
            cache[path] = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(raw))]
        else:
            cache[path] = json.loads(path.read_text())
    return cache[path]


def lookup(doc: object, key: str) -> object:
    node = doc
    for part in KEY_PART.findall(key):
        if part.startswith("["):
            wanted = dict(item.split("=", 1) for item in part[1:-1].split(","))
            matches = [row for row in node if isinstance(row, dict)
                       and all(str(row.get(k)) == v or row.get(k) == _number(v) for k, v in wanted.items())]  # fmt: skip
            if len(matches) != 1:
                raise CiteError(f"{part} matches {len(matches)} rows (need exactly 1)")
            node = matches[0]
        elif isinstance(node, list) and ":" in part:
            start, stop = (int(v) if v else None for v in part.split(":"))
            node = node[start:stop]
        elif isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise CiteError(f"no key {part!r} in {key!r}")
    return node


def evaluate(expr: str, default_file: str | None, root: Path, cache: dict) -> float:
    tokens = OPERATOR.split(expr.strip())
    value = _operand(tokens[0], default_file, root, cache)
    for op, operand in zip(tokens[1::2], tokens[2::2], strict=True):
        value = OPERATIONS[op](value, _operand(operand, default_file, root, cache))
    return value


def _operand(text: str, default_file: str | None, root: Path, cache: dict) -> float:
    if re.fullmatch(r"[-+]?\d+(\.\d+)?", text):
        return float(text)
    if text.startswith("mean(") and text.endswith(")"):
        values = [v for v in _resolve(text[5:-1], default_file, root, cache) if v is not None]
        if not values or not all(isinstance(v, (int, float)) for v in values):
            raise CiteError(f"{text}: not a list of numbers")
        return sum(values) / len(values)
    value = _resolve(text, default_file, root, cache)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CiteError(f"{text} is {value!r}, not a number")
    return float(value)


def _resolve(text: str, default_file: str | None, root: Path, cache: dict) -> object:
    named = re.match(r"([\w./-]+\.(?:json|csv|csv\.gz)):", text)
    name, key = (named[1], text[named.end():]) if named else (default_file, text)
    if not name:
        raise CiteError(f"{text!r}: no file (add a <!-- results: FILE --> line before it, or FILE:KEY)")
    return lookup(load(root / RESULTS / name, cache), key)


def matches(quoted: str, value: float) -> bool:
    text = quoted.replace(",", "").replace("−", "-")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - value) <= 0.5 * 10**-decimals + 1e-9


def check(root: Path = ROOT) -> tuple[list[str], list[str]]:
    """(problems, checked): one line per mismatch, unresolved cite or missing named file; one per checked number."""
    problems, checked, cache = [], [], {}
    for doc in documents(root):
        default = None
        for lineno, line in enumerate(doc.read_text().splitlines(), 1):
            where = f"{doc.relative_to(root)}:{lineno}"
            if directive := FILE_DIRECTIVE.search(line):
                default = directive.group(1)
            for named in NAMED_PATH.findall(line):
                if "*" not in named and not (root / named).exists():  # a glob names files still to come
                    problems.append(f"{where}: names {named}, which does not exist")
            for m in CITE.finditer(line):
                try:
                    value = evaluate(m["cite"], default, root, cache)
                except (CiteError, LookupError, ValueError, ZeroDivisionError) as err:
                    problems.append(f"{where}: {m['num']}{m['unit']} cites {m['cite']!r}: {err}")
                    continue
                if matches(m["num"], value):
                    checked.append(f"{where}: {m['num']}{m['unit']} = {value:.6g} ({m['cite']})")
                else:
                    problems.append(f"{where}: {m['num']}{m['unit']} does not match {m['cite']!r} = {value:.6g}")
    return problems, checked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT, help="the repository to check (default: this one)")
    p.add_argument("--list", action="store_true", help="print every checked number too")
    args = p.parse_args(argv)
    problems, checked = check(args.root)
    if args.list:
        print("\n".join(checked))
    print("\n".join(problems), file=sys.stderr) if problems else None
    print(f"{len(checked)} cited numbers match their result files; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
