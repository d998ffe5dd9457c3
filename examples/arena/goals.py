"""The arena's goals, read off one benchmark JSON (nar-caption-benchmark --out-json): the speed
goals of the arena issue (#10), the quality goals of issue #12, the skeptic's yardstick of issue
#20 and, when the arena ran its SCST stage, the self-critical goals of issue #22.  Every goal is
measured against the best AR row of the run (the benchmark's ``--ar-rows``; "AR beam 5" in a JSON
without one).

    python examples/arena/goals.py runs/arena_images/benchmark.json [--retrieved-cider 118.4]

Prints one markdown line per goal: the measured figure and met / not met.  Rows are found by
their names in examples/arena/arena.sh ("AR beam 5", "NARVL CTC", "NACF CT-MP T=2 ...",
"SAIC k=2 (1,1)", "RDT T=10"); a paradigm is the row name's first word.  ``--retrieved-cider``:
the CIDEr-D of RDT's retrieved sentence alone on the same items (its goal needs it).
"""
import argparse
import json

SCST = " + SCST"  # arena.sh names a CIDEr-optimised row after its cross-entropy row


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("benchmark_json")
    p.add_argument("--retrieved-cider", type=float, default=None)
    a = p.parse_args(argv)
    retrieved = a.retrieved_cider
    j = json.load(open(a.benchmark_json))
    rows = {r["name"]: r for r in j["rows"]}
    sweep = (j.get("length_sweep") or {}).get("rows", {})
    ref = (j.get("environment") or {}).get("best_ar") or "AR beam 5"
    base = rows[ref]["latency"]["median_ms"]
    speed = {n: base / r["latency"]["median_ms"] for n, r in rows.items()}
    out = ["| goal | measured | met? |", "|---|---|---|"]

    def line(goal, figure, ok):
        out.append(f"| {goal} | {figure} | {'met' if ok else 'not met'} |")

    ctc = rows.get("NARVL CTC")
    if ctc:
        line(f"CTC ≥ 6× faster than {ref} (batch 1, CPU)", f"{speed['NARVL CTC']:.2f}×", speed["NARVL CTC"] >= 6)
        line("CTC ≤ 1.2× a bare forward pass", f"{ctc['x_bare']:.2f}×", ctc["x_bare"] <= 1.2)
    ct = {n: s for n, s in speed.items() if n.startswith("NACF CT-MP T=2") or n.startswith("NACF CT-MP T=1")}
    if ct:
        best = max(ct, key=ct.get)
        line(f"CT-MP at T ≤ 2 ≥ 3× faster than {ref}", f"{ct[best]:.2f}× ({best})", ct[best] >= 3)
    saic = next((n for n in rows if n.startswith("SAIC k=2 (1,1)")), None)
    if saic:
        line(f"outline-fill k = 2 (1,1) ≥ 2× faster than {ref}", f"{speed[saic]:.2f}×", speed[saic] >= 2)
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
    quality_goals(rows, speed, line, retrieved, ref)
    skeptic_goals(rows, speed, line, ref, (j.get("environment") or {}).get("compare") or [])
    scst_goals(rows, line)
    print("\n".join(out))


def quality_goals(rows, speed, line, retrieved=None, ref="AR beam 5"):
    """Issue #12: per paradigm, its best row at least 2x faster than the best AR row reaches >= 95 % of its
    CIDEr-D (CTC one pass >= 90 %); RDT T=10 within 1 CIDEr-D of T=50 and >= 20 above its
    retrieved sentence."""
    cider = {n: 100 * r["scores"]["CIDEr-D"] for n, r in rows.items()}
    ar = cider[ref]
    for paradigm in ("NACF", "SAIC", "NARVL", "RDT"):
        fast = [n for n in rows if n.split()[0] == paradigm and speed[n] >= 2]
        if not [n for n in rows if n.split()[0] == paradigm]:
            continue
        if not fast:
            line(f"{paradigm}: best row ≥ 2× faster reaches ≥ 95 % of {ref}", "no row is 2× faster", False)
            continue
        best = max(fast, key=cider.get)
        line(f"{paradigm}: best row ≥ 2× faster reaches ≥ 95 % of {ref} ({ar:.1f})",
             f"{cider[best]:.1f} = {100 * cider[best] / ar:.0f} % ({best}, {speed[best]:.2f}×)", cider[best] >= 0.95 * ar)
    ctc = [n for n in rows if n.split()[0] == "NARVL" and n.endswith("CTC")]
    if ctc:
        best = max(ctc, key=cider.get)
        line(f"CTC (one pass) ≥ 90 % of {ref}", f"{cider[best]:.1f} = {100 * cider[best] / ar:.0f} % ({best})",
             cider[best] >= 0.9 * ar)
    t10 = next((n for n in rows if n.startswith("RDT") and "T=10" in n), None)
    t50 = next((n for n in rows if n.startswith("RDT") and "T=50" in n), None)
    if t10 and t50:
        line("RDT T=10 within 1 CIDEr-D of T=50", f"{cider[t10]:.1f} vs {cider[t50]:.1f}",
             cider[t10] >= cider[t50] - 1)
    if t10 and retrieved is not None:
        line("RDT T=10 ≥ 20 CIDEr-D above its retrieved sentence alone", f"{cider[t10]:.1f} vs {retrieved:.1f}",
             cider[t10] >= retrieved + 20)



def skeptic_goals(rows, speed, line, ref, compare):
    """Issue #20: the best one-pass NAR row (one decoder pass per item) >= 90 % of the best AR row at >= 4x its
    batch-1 speed; no NAR row above 5 % captions with an immediately repeated word; AR beam >= AR greedy; the NAR
    rows >= 3x faster than the shallow-decoder AR row (the first ``compare`` row); at batch 64 the fastest NAR
    row's throughput >= 1.5x the best AR row's."""
    cider = {n: 100 * r["scores"]["CIDEr-D"] for n, r in rows.items()}
    nar = [n for n in rows if not n.startswith("AR")]
    one_pass = [n for n in nar if rows[n].get("decoder_passes", 0) <= 1.0 and speed[n] >= 4]
    if one_pass:
        b = max(one_pass, key=cider.get)
        line(f"best one-pass NAR row ≥ 90 % of {ref} ({cider[ref]:.1f}) at ≥ 4× its batch-1 speed",
             f"{cider[b]:.1f} = {100 * cider[b] / cider[ref]:.0f} % ({b}, {speed[b]:.2f}×)", cider[b] >= 0.9 * cider[ref])
    if nar and all("repeat_rate" in rows[n] for n in nar):
        w = max(nar, key=lambda n: rows[n]["repeat_rate"])
        line("no NAR row above 5 % captions with an immediately repeated word",
             f"worst {100 * rows[w]['repeat_rate']:.1f} % ({w}; rows with '+ dedup' in their name use --dedup)",
             rows[w]["repeat_rate"] <= 0.05)
    beams = [n for n in rows if n.startswith("AR") and "shallow" not in n and "greedy" not in n and SCST not in n]
    if "AR greedy" in rows and beams:
        b = max(beams, key=cider.get)
        line("AR beam ≥ AR greedy", f"{cider[b]:.1f} ({b}) vs {cider['AR greedy']:.1f}", cider[b] >= cider["AR greedy"])
    if compare and compare[0] in rows and nar:
        sh = rows[compare[0]]["latency"]["median_ms"]
        vs = {n: sh / rows[n]["latency"]["median_ms"] for n in nar}
        ok = [n for n in nar if vs[n] >= 3]
        w = min(vs, key=vs.get)
        line(f"NAR rows ≥ 3× faster than {compare[0]} (batch 1)",
             f"{len(ok)}/{len(nar)} rows; slowest {vs[w]:.2f}× ({w})", len(ok) == len(nar))
    if nar and rows[ref].get("throughput") and all(rows[n].get("throughput") for n in nar):
        f = max(nar, key=lambda n: rows[n]["throughput"])
        ratio = rows[f]["throughput"] / rows[ref]["throughput"]
        batch = rows[f].get("throughput_batch", 64)
        line(f"fastest NAR row's throughput at batch {batch} ≥ 1.5× {ref}'s",
             f"{ratio:.2f}× ({f}, {rows[f]['throughput']:.0f} vs {rows[ref]['throughput']:.0f} items/s)", ratio >= 1.5)


def scst_goals(rows, line):
    """Issue #22: every row with SCST >= its cross-entropy row + 5 CIDEr-D, without more captions with an immediately
    repeated word; AR beam 5 >= AR greedy after SCST."""
    cider = {n: 100 * r["scores"]["CIDEr-D"] for n, r in rows.items()}
    for n in rows:
        base = n[: -len(SCST)] if n.endswith(SCST) else None
        if base not in rows:
            continue
        more = (rows[n].get("repeat_rate") or 0) > (rows[base].get("repeat_rate") or 0)
        figure = f"{cider[n]:.1f} vs {cider[base]:.1f} ({cider[n] - cider[base]:+.1f})"
        if "repeat_rate" in rows[n] and "repeat_rate" in rows[base]:
            figure += f"; repeats {100 * rows[n]['repeat_rate']:.1f} % vs {100 * rows[base]['repeat_rate']:.1f} %"
        line(f"{base}: SCST ≥ cross-entropy + 5 CIDEr-D, repeats not higher", figure,
             cider[n] >= cider[base] + 5 and not more)
    if "AR beam 5" + SCST in rows and "AR greedy" + SCST in rows:
        b, g = cider["AR beam 5" + SCST], cider["AR greedy" + SCST]
        line("AR beam 5 ≥ AR greedy after SCST", f"{b:.1f} vs {g:.1f}", b >= g)


if __name__ == "__main__":
    main()
