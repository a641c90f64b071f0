"""Where the suite's time goes: per-file totals and the slowest tests of a pytest run.

tests/README.md's tables come from this script; after a change that moves the suite's
time, regenerate them:

  .venv/bin/python -m pytest -q -n auto --dist worksteal --junitxml=/tmp/run.xml
  .venv/bin/python tests/timing.py /tmp/run.xml [--before /tmp/old.xml] [--top 15]

and where its XLA compiles go (tests/site/sitecustomize.py writes one JSON line per
compile, in every process the suite starts, when JAXPRUNE_COMPILE_LOG is set):

  JAXPRUNE_COMPILE_LOG=/tmp/compiles.jsonl .venv/bin/python -m pytest -q -n auto --dist worksteal
  .venv/bin/python tests/timing.py --compiles /tmp/compiles.jsonl

A test's time is its setup + call + teardown as pytest-xdist's worker measured it (so a
shared fixture is counted in the test that built it, and time spent waiting for a lock
held by the other worker is counted too). With ``--before`` the tables compare two runs
side by side, and the test ids that only one run has are listed (none: no test lost).
"""

from __future__ import annotations

import argparse
import collections
import json
import xml.etree.ElementTree as ET


def read(path: str) -> dict[str, float]:
  """{test id: seconds} of a junit XML file written by ``pytest --junitxml``."""
  out = {}
  for case in ET.parse(path).iter("testcase"):
    module = case.get("classname", "").replace(".", "/")
    out[f"{module}.py::{case.get('name')}"] = float(case.get("time") or 0)
  return out


def per_file(times: dict[str, float]) -> dict[str, tuple[int, float]]:
  counts, totals = collections.Counter(), collections.defaultdict(float)
  for test, seconds in times.items():
    counts[test.split("::")[0]] += 1
    totals[test.split("::")[0]] += seconds
  return {f: (counts[f], totals[f]) for f in totals}


def compiles(path: str, top: int = 15) -> str:
  """A markdown summary of a compile log: CPU seconds per program and per test, and the
  programs (cache keys) compiled more than once, which a shared cache could have saved."""
  rows = [json.loads(line) for line in open(path) if line.strip()]
  programs, tests, keys = (collections.defaultdict(list) for _ in range(3))
  for r in rows:
    programs[r["program"]].append(r["cpu_s"])
    tests[r["test"] or "(outside a test)"].append(r["cpu_s"])
    keys[r["key"]].append(r["cpu_s"])
  again = [cpu for cpu in keys.values() if len(cpu) > 1]  # all but the dearest compile
  lines = [f"{len(rows)} compiles, {sum(r['cpu_s'] for r in rows):.1f} CPU-s; "
           f"{len(keys)} distinct programs, {len(again)} of them compiled again "
           f"({sum(len(c) - 1 for c in again)} compiles, "
           f"{sum(sum(c) - max(c) for c in again):.1f} CPU-s)", ""]
  for title, groups in (("program", programs), ("test", tests)):
    lines += [f"| {title} | compiles | CPU s |", "|---|---|---|"]
    for name, cpu in sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]:
      lines.append(f"| `{name}` | {len(cpu)} | {sum(cpu):.1f} |")
    lines.append("")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("junit", nargs="?", help="junit XML of the run to show")
  parser.add_argument("--before", help="junit XML of an earlier run, shown beside it")
  parser.add_argument("--top", type=int, default=15, help="how many slowest tests")
  parser.add_argument("--compiles", help="a JAXPRUNE_COMPILE_LOG file to summarise")
  args = parser.parse_args(argv)
  if args.compiles:
    print(compiles(args.compiles, args.top))
  if not args.junit:
    if not args.compiles:
      parser.error("give a junit XML file, --compiles, or both")
    return
  now = read(args.junit)
  before = read(args.before) if args.before else None
  files_now = per_file(now)
  files_before = per_file(before) if before else {}
  head = "| file | tests | seconds |" if before is None else "| file | tests | before s | now s |"
  print(head)
  print("|" + "---|" * (head.count("|") - 1))
  for f, (n, s) in sorted(files_now.items(), key=lambda kv: -kv[1][1]):
    if before is None:
      print(f"| {f} | {n} | {s:.0f} |")
    else:
      print(f"| {f} | {n} | {files_before.get(f, (0, 0.0))[1]:.0f} | {s:.0f} |")
  total = sum(now.values())
  if before is None:
    print(f"| **all** | {len(now)} | {total:.0f} |")
  else:
    print(f"| **all** | {len(now)} | {sum(before.values()):.0f} | {total:.0f} |")
  print(f"\nslowest {args.top} tests (setup + call + teardown, seconds):\n")
  for test, seconds in sorted(now.items(), key=lambda kv: -kv[1])[:args.top]:
    was = f" (before {before[test]:.0f})" if before and test in before else ""
    print(f"- {seconds:.0f}{was} `{test}`")
  if before is not None:
    gone, new = sorted(set(before) - set(now)), sorted(set(now) - set(before))
    print(f"\ntest ids only before: {len(gone)}; only now: {len(new)}")
    for test in gone:
      print(f"  - {test}")
    for test in new:
      print(f"  + {test}")


if __name__ == "__main__":
  main()
