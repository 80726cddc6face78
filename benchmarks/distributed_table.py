"""BENCHMARKS.md's distributed tables from the JSON files of ``benchmarks/distributed_sweep.sh``.

    python benchmarks/distributed_table.py bench-out
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _rows(files: list[Path]) -> list[dict]:
    rows = []
    for path in files:
        report = json.loads(path.read_text())
        rows += [{**row, "load": report["load_average"][0]} for row in report["rows"]]
    return rows


def timing(out: Path) -> str:
    rows = _rows(sorted(out.glob("distributed-[0-9]*.json")))
    base = {(r["n"], r["pass"]): r["ms"] for r in rows if r["world"] == 1}
    lines = ["| N | pass | W | mode | ms (median of 5) | one process / this | comm ms | "
             "comm share | load avg |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], r["pass"], r["world"], r["mode"])):
        ratio = base.get((r["n"], r["pass"]))
        comm = "—" if r["comm_ms"] is None else str(r["comm_ms"])
        share = "—" if r["comm_share"] is None else f"{100 * r['comm_share']:.1f}%"
        lines.append(f"| {r['n']} | {r['pass']} | {r['world']} | {r['mode']} | {r['ms']} | "
                     f"{ratio / r['ms']:.2f} | {comm} | {share} | {r['load']:.1f} |"
                     if ratio else f"| {r['n']} | {r['pass']} | {r['world']} | {r['mode']} | "
                     f"{r['ms']} | — | {comm} | {share} | {r['load']:.1f} |")
    return "\n".join(lines)


def memory(out: Path) -> str:
    rows = _rows(sorted(out.glob("mem-*.json")))
    total = {id(r): r["inputs_mb_per_rank"] + r["peak_extra_mb_per_rank"] for r in rows}
    base = {(r["n"], r["pass"]): total[id(r)] for r in rows if r["world"] == 1}
    lines = ["| N | pass | W | mode | inputs MB / rank | the call's peak MB / rank | "
             "inputs + peak MB / rank | one process / this | one call ms | mmap threshold |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], r["pass"], r["mode"] != "one process",
                                         r["mode"], r["world"])):
        ratio = base[(r["n"], r["pass"])] / total[id(r)]
        lines.append(f"| {r['n']} | {r['pass']} | {r['world']} | {r['mode']} | "
                     f"{r['inputs_mb_per_rank']} | {r['peak_extra_mb_per_rank']} | "
                     f"{total[id(r)]:.1f} | {ratio:.2f} | {r['ms']} | "
                     f"{'pinned' if r.get('pinned_mmap_threshold') else 'dynamic'} |")
    return "\n".join(lines)


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out")
    print("Time\n\n" + timing(out) + "\n\nPeak memory per rank\n\n" + memory(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
