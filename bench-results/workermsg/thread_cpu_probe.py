"""Ad hoc A/B probe: native decode in-process vs worker, per-thread CPU and context switches per token."""
import json, os, sys, time, threading, statistics as st
from corert.runtime import Runtime

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
TICK = os.sysconf("SC_CLK_TCK")

def threads(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            ns = int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
            s = open(f"/proc/{pid}/task/{tid}/status").read()
            vol = int(s.split("voluntary_ctxt_switches:")[1].split()[0])
            nonv = int(s.split("nonvoluntary_ctxt_switches:")[1].split()[0])
            out[int(tid)] = (ns / 1e9, vol, nonv)
        except (OSError, IndexError):
            pass
    return out

def proc_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK

def snap(rt):
    pids = {"host": os.getpid()}
    for w in rt.workers_info():
        if w["model"].startswith("generate") and w["pid"]:
            pids["worker"] = w["pid"]
    out = {k: threads(p) for k, p in pids.items()}
    out["_total"] = {k: proc_cpu(p) for k, p in pids.items()}
    return out

def diff(a, b, n):
    res = {}
    names = {t.native_id: t.name for t in threading.enumerate()}
    res["_total"] = {k: (v - a["_total"].get(k, 0)) * 1e3 / n for k, v in b["_total"].items()}
    for proc in b:
        if proc == "_total":
            continue
        rows = []
        for tid, (c, v, nv) in b[proc].items():
            c0, v0, nv0 = a.get(proc, {}).get(tid, (0, 0, 0))
            if c - c0 > 0 or v - v0 > 0:
                rows.append((round((c - c0) * 1e3 / n, 3), round((v - v0) / n, 2), round((nv - nv0) / n, 2), names.get(tid, "") if proc == "host" else ""))
        rows.sort(reverse=True)
        res[proc] = rows
    return res

def stream(rt, prompt, n):
    """Per-thread CPU between token 8 and token n-8: steady decode, every thread (the worker's request
    thread too) alive at both snapshots."""
    a = b = None; k0 = k1 = 0
    t0 = time.perf_counter(); first = last = None; ids = []
    for ch in rt.stream(prompt, max_tokens=n, temperature=0, ignore_eos=True):
        now = time.perf_counter()
        if ch.token_ids:
            first = first or now; last = now; ids.extend(ch.token_ids)
            if a is None and len(ids) >= 8:
                a, k0 = snap(rt), len(ids)
            elif b is None and len(ids) >= n - 8:
                b, k1 = snap(rt), len(ids)
    return {"tok_s": (len(ids) - 1) / (last - first), "threads": diff(a, b, k1 - k0), "ids": ids}

def main(rounds=6, n=int(os.environ.get('AB_TOKENS', 64))):
    sides = {"in": Runtime(engine="native"), "proc": Runtime(engine="native", isolation="process")}
    for rt in sides.values():
        stream(rt, PROMPT, 8)
    end = time.monotonic() + 120
    while next(w for w in sides["proc"].workers_info() if w["model"].startswith("generate"))["standby"] != "ready" and time.monotonic() < end:
        time.sleep(0.1)
    runs = {k: [] for k in sides}
    for i in range(rounds):
        for name in (list(sides) if i % 2 == 0 else list(sides)[::-1]):
            runs[name].append(stream(sides[name], f"({i+1}) {PROMPT}", n))
    for rt in sides.values():
        rt.close()
    out = {"load": os.getloadavg(), "tag": os.environ.get("AB_TAG", "")}
    for k, rs in runs.items():
        out[k] = {"tok_s": [round(r["tok_s"], 1) for r in rs],
                  "proc_cpu_ms_tok": {p: round(st.median(r["threads"]["_total"].get(p, 0) for r in rs), 3) for p in ("host", "worker")}}
        for proc in ("host", "worker"):
            tabs = [r["threads"].get(proc) for r in rs if r["threads"].get(proc)]
            if not tabs:
                continue
            cpu = [sum(x[0] for x in t) for t in tabs]
            # top threads by cpu (ms/token, vol cs/token, invol cs/token), median over rounds by rank
            width = max(len(t) for t in tabs)
            ranks = []
            for j in range(min(width, 8)):
                vals = [t[j] for t in tabs if len(t) > j]
                ranks.append(tuple(round(st.median(v[q] for v in vals), 3) for q in range(3)) + (vals[0][3][:22],))
            out[k][proc] = {"cpu_ms_tok": round(st.median(cpu), 3), "top": ranks,
                            "cs_tok": round(st.median(sum(x[1] + x[2] for x in t) for t in tabs), 2)}
    ratios = [p / q for p, q in zip(out["proc"]["tok_s"], out["in"]["tok_s"])]
    out["ratio_median"] = round(st.median(ratios), 3)
    out["ratios"] = [round(r, 3) for r in ratios]
    out["same_ids"] = all(a["ids"] == b["ids"] for a, b in zip(runs["in"], runs["proc"]))
    print(json.dumps(out))

if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
