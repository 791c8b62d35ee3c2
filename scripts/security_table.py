"""Render docs/security.md's attack table from the attack suite's records.

    FLASHEVOLVE_SECURITY_REPORT=/tmp/security.json python -m pytest -q tests/test_sandbox_attacks.py
    python scripts/security_table.py /tmp/security.json --write docs/security.md

Without ``--write`` the table is printed.  With it, the part of the file between the
``<!-- security-table:start -->`` and ``<!-- security-table:end -->`` markers is replaced.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

START, END = "<!-- security-table:start -->", "<!-- security-table:end -->"


def cell(records: list[dict[str, Any]]) -> str:
    if not records:
        return "not run"
    if all(r["stopped"] for r in records):
        hows = sorted({r["how"] for r in records})
        return "stopped: " + "; ".join(hows)
    return "**NOT STOPPED**"


def render(report: dict[str, Any]) -> str:
    records = report["records"]
    variants = list(dict.fromkeys(r["variant"] for r in records))
    attacks = list(dict.fromkeys(r["attack"] for r in records))
    lines = ["| attack | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for attack in attacks:
        cells = [
            cell([r for r in records if r["attack"] == attack and r["variant"] == v])
            for v in variants
        ]
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    lines += ["", "What each column had on this machine (`protections()`):", ""]
    for name, prot in report["machine"].items():
        if name not in variants:
            continue
        layers = [k for k in ("user_ns", "net_ns", "pid_ns", "mount_ns", "ipc_ns") if prot[k]]
        layers += ["unprivileged uid"] if prot["unprivileged_uid"] else []
        layers += ["RLIMIT_NPROC"] if prot["nproc_limit"] else []
        layers += [f"Landlock ABI {prot['landlock_abi']}"] if prot["landlock"] else []
        lines.append(f"- **{name}** (isolation `{prot['isolation']}`): " + ", ".join(layers))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="the JSON written by tests/test_sandbox_attacks.py")
    parser.add_argument("--write", help="a markdown file with the table markers to update")
    args = parser.parse_args()
    table = render(json.loads(Path(args.report).read_text(encoding="utf-8")))
    if not args.write:
        print(table)
        return
    doc = Path(args.write)
    text = doc.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{doc} has no {START} ... {END} markers")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), flags=re.S)
    doc.write_text(pattern.sub(lambda _: f"{START}\n{table}\n{END}", text), encoding="utf-8")
    print(f"updated {doc}")


if __name__ == "__main__":
    main()
