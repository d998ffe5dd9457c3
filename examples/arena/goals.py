"""The arena issue's speed goals, read off one benchmark JSON (nar-caption-benchmark --out-json).

    python examples/arena/goals.py runs/arena_images/benchmark.json

Prints one markdown line per goal: the measured figure and met / not met.  Rows are found by
their names in examples/arena/arena.sh ("AR beam 5", "NARVL CTC", "NACF CT-MP T=2 ...",
"SAIC k=2 (1,1)").
"""
import json
import sys


def main(path):
    j = json.load(open(path))
    rows = {r["name"]: r for r in j["rows"]}
    sweep = (j.get("length_sweep") or {}).get("rows", {})
    base = rows["AR beam 5"]["latency"]["median_ms"]
    speed = {n: base / r["latency"]["median_ms"] for n, r in rows.items()}
    out = ["| goal | measured | met? |", "|---|---|---|"]

    def line(goal, figure, ok):
        out.append(f"| {goal} | {figure} | {'met' if ok else 'not met'} |")

    ctc = rows.get("NARVL CTC")
    if ctc:
        line("CTC ≥ 6× faster than AR beam 5 (batch 1, CPU)", f"{speed['NARVL CTC']:.2f}×", speed["NARVL CTC"] >= 6)
        line("CTC ≤ 1.2× a bare forward pass", f"{ctc['x_bare']:.2f}×", ctc["x_bare"] <= 1.2)
    ct = {n: s for n, s in speed.items() if n.startswith("NACF CT-MP T=2") or n.startswith("NACF CT-MP T=1")}
    if ct:
        best = max(ct, key=ct.get)
        line("CT-MP at T ≤ 2 ≥ 3× faster than AR beam 5", f"{ct[best]:.2f}× ({best})", ct[best] >= 3)
    saic = next((n for n in rows if n.startswith("SAIC k=2 (1,1)")), None)
    if saic:
        line("outline-fill k = 2 (1,1) ≥ 2× faster than AR beam 5", f"{speed[saic]:.2f}×", speed[saic] >= 2)
    worst = max(rows.values(), key=lambda r: r["overhead"])
    within = [n for n, r in rows.items() if r["overhead"] <= 1.3]
    line("every generator within 1.3× of passes × bare decoder pass + encoder pass",
         f"{len(within)}/{len(rows)} rows; worst {worst['overhead']:.2f}× ({worst['name']})",
         len(within) == len(rows))
    if sweep:
        lengths = (j.get("length_sweep") or {}).get("lengths", [])
        grow = {n: o["growth"] for n, o in sweep.items() if "growth" in o and not n.startswith("AR")}
        fixed = [n for n, o in sweep.items() if o.get("fixed_positions")]
        if grow:
            w = max(grow, key=grow.get)
            line(f"NAR latency growth {min(lengths)} → {max(lengths)} tokens ≤ 1.3×",
                 f"worst {grow[w]:.2f}× ({w}); {len(fixed)} fixed-position rows 1.00× by construction",
                 grow[w] <= 1.3)
        ar = sweep.get("AR beam 5", {}).get("growth")
        if ar:
            out.append(f"| (AR beam 5 growth {min(lengths)} → {max(lengths)} tokens, for comparison) | "
                       f"{ar:.2f}× (linear would be {max(lengths) / min(lengths):.1f}×) | |")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
