"""The papers' orderings, read off one benchmark JSON of examples/arena/orderings.sh.

    python examples/arena/orderings.py runs/demo/orderings/benchmark.json [--out-md F] [--out-json F]

Rows are named "<arm> <decoding> / seed <s>" (and "AR beam 5").  Per arm: CIDEr-D mean ± sample
standard deviation over the seeds, its range and its share of AR beam 5.  Per claim "A ≥ B": the
paired differences A − B seed by seed (the same seed trains both arms), their mean ± sd, and a
verdict: holds (A > B in every seed), reversed (A < B in every seed), or unresolved (the seeds
disagree).  The three claims with the smallest |mean difference| are marked as the closest.
"""
import argparse
import json
import re
import statistics

# (claim, source, arm A, arm B): A is the arm the paper says is better (or not worse)
CLAIMS = [
    ("KD helps NACF", "NACF §4 (trains on distilled captions)", "nacf_kd CT-MP T=2 B=1", "nacf_raw CT-MP T=2 B=1"),
    ("KD helps SAIC", "SAIC Table 5", "saic2_kd (1,1)", "saic2_raw (1,1)"),
    ("KD helps NARVL", "NARVL Table 9", "narvl_kd CTC", "narvl_raw CTC"),
    ("KD helps RDT", "RDT §IV-A (distilled captions)", "rdt_kd T=10", "rdt_raw T=10"),
    ("Q-CTC ≫ position-wise CE", "NARVL Table 8", "narvl_ctc CTC", "narvl_ce CTC"),
    ("glancing helps NARVL", "the arena's lever (GLAT; not in the papers)", "narvl_kd CTC", "narvl_ctc CTC"),
    ("CT-MP ≥ MP (T = 2)", "NACF Table 4", "nacf_kd CT-MP T=2 B=1", "nacf_kd MP T=2 B=1"),
    ("--dedup helps NACF", "NAT de-duplication (not in the papers)", "nacf_kd CT-MP T=2 B=1 dedup",
     "nacf_kd CT-MP T=2 B=1"),
    ("--dedup helps RDT", "NAT de-duplication (not in the papers)", "rdt_kd T=10 dedup", "rdt_kd T=10"),
    ("k = 2 ≥ k = 4 in quality", "SAIC Table 6", "saic2_kd (1,1)", "saic4_kd (1,1)"),
    ("RVE helps (no RL)", "RDT Table V", "rdt_rve T=10", "rdt_base T=10"),
    ("RL helps (no RVE)", "RDT Table V", "rdt_rl T=10", "rdt_base T=10"),
    ("RVE helps (with RL)", "RDT Table V", "rdt_kd T=10", "rdt_rl T=10"),
    ("RL helps (with RVE)", "RDT Table V", "rdt_kd T=10", "rdt_rve T=10"),
    ("DAG lookahead ≥ NARVL CTC (glancing)", "DA-Transformer vs CTC (the DAG paradigm's goal)", "dag_kd lookahead",
     "narvl_kd CTC"),
    ("KD helps DAG", "DA-Transformer §4 (claims it needs none)", "dag_kd lookahead", "dag_raw lookahead"),
    ("viterbi ≥ lookahead (DAG)", "Shao et al. 2022", "dag_kd viterbi", "dag_kd lookahead"),
]
ROW = re.compile(r"^(?P<arm>.+) / seed (?P<seed>\S+)$")


def sd(xs):
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def analyse(bench: dict) -> dict:
    base, arms = None, {}
    for r in bench["rows"]:
        cider = 100 * r["scores"]["CIDEr-D"]
        m = ROW.match(r["name"])
        if m:
            arms.setdefault(m["arm"], {})[m["seed"]] = cider
        elif r["name"] == "AR beam 5":
            base = cider
    per_arm = {a: {"seeds": s, "mean": statistics.fmean(s.values()), "sd": sd(list(s.values())),
                   "min": min(s.values()), "max": max(s.values()),
                   "of_ar_beam5": statistics.fmean(s.values()) / base if base else None}
               for a, s in arms.items()}
    claims = []
    for claim, source, a, b in CLAIMS:
        if a not in arms or b not in arms:
            continue
        seeds = sorted(set(arms[a]) & set(arms[b]))
        d = [arms[a][s] - arms[b][s] for s in seeds]
        if not d:
            continue
        verdict = "holds" if all(x > 0 for x in d) else "reversed" if all(x < 0 for x in d) else "unresolved"
        claims.append({"claim": claim, "source": source, "a": a, "b": b, "seeds": seeds, "diffs": d,
                       "mean_diff": statistics.fmean(d), "sd_diff": sd(d), "verdict": verdict})
    for c in sorted(claims, key=lambda c: abs(c["mean_diff"]))[:3]:
        c["closest"] = True
    return {"ar_beam5": base, "arms": per_arm, "claims": claims}


def markdown(res: dict) -> str:
    out = [f"AR beam 5: {res['ar_beam5']:.1f} CIDEr-D" if res["ar_beam5"] is not None else "AR beam 5: not in the run", "",
           "| arm | seeds | CIDEr-D mean ± sd | range | of AR beam 5 |", "|---|---|---|---|---|"]
    for a, r in res["arms"].items():
        share = f"{100 * r['of_ar_beam5']:.0f} %" if r["of_ar_beam5"] else ""
        out.append(f"| {a} | {len(r['seeds'])} | {r['mean']:.1f} ± {r['sd']:.1f} | {r['min']:.1f}–{r['max']:.1f} | {share} |")
    out += ["", "| claim (source) | A − B per seed | mean ± sd | verdict |", "|---|---|---|---|"]
    for c in res["claims"]:
        per = ", ".join(f"{x:+.1f}" for x in c["diffs"])
        mark = " (one of the 3 closest)" if c.get("closest") else ""
        out.append(f"| {c['claim']} ({c['source']}): {c['a']} vs {c['b']} | {per} | {c['mean_diff']:+.1f} ± "
                   f"{c['sd_diff']:.1f} | {c['verdict']}{mark} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("benchmark_json")
    p.add_argument("--out-md")
    p.add_argument("--out-json")
    a = p.parse_args(argv)
    with open(a.benchmark_json) as f:
        res = analyse(json.load(f))
    md = markdown(res)
    print(md, end="")
    if a.out_md:
        with open(a.out_md, "w") as f:
            f.write(md)
    if a.out_json:
        with open(a.out_json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
