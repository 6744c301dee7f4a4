"""iso16 diagnostic: native SmolLM2 decode in-process vs in a worker, alternating rounds; per-thread CPU and
context switches per token in the host and the worker; the worker's spin count (from its log)."""
import json, os, sys, time, glob
from corert.runtime import Runtime

ROUNDS = int(os.environ.get("DIAG_ROUNDS", "4"))
N = int(os.environ.get("DIAG_TOKENS", "64"))
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
TCK = os.sysconf("SC_CLK_TCK")


def threads(pid):
    out = {}
    for t in glob.glob(f"/proc/{pid}/task/*"):
        try:
            stat = open(f"{t}/stat").read()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            f = stat.rsplit(")", 1)[1].split()
            st = dict(l.split(":\t") for l in open(f"{t}/status").read().splitlines() if ":\t" in l)
            out[t.rsplit("/", 1)[1]] = (comm, (int(f[11]) + int(f[12])) / TCK,
                                        int(st["voluntary_ctxt_switches"]), int(st["nonvoluntary_ctxt_switches"]))
        except (OSError, ValueError, KeyError):
            pass
    return out


import threading
NAMES = {}


def pid_is_host(tid):
    return os.path.exists(f"/proc/{os.getpid()}/task/{tid}")


def refresh_names():
    NAMES.update({t.native_id: t.name[:24] for t in threading.enumerate()})


def delta(a, b, n):
    rows = {}
    for tid, (comm, cpu, v, nv) in b.items():
        c0, v0, nv0 = (a[tid][1], a[tid][2], a[tid][3]) if tid in a else (0, 0, 0)
        key = NAMES.get(int(tid), f"{comm}:{tid}") if pid_is_host(tid) else f"w:{tid}"
        r = rows.setdefault(key, [0.0, 0.0, 0.0])
        r[0] += (cpu - c0) * 1e3 / n
        r[1] += (v - v0) / n
        r[2] += (nv - nv0) / n
    return {k: [round(x, 3) for x in v] for k, v in rows.items() if any(v)}


def stream(rt, prompt, pids):
    before = {p: threads(p) for p in pids}
    t0 = time.perf_counter(); first = last = None; n = 0
    for ch in rt.stream(prompt, max_tokens=N, temperature=0, ignore_eos=True):
        now = time.perf_counter()
        if ch.token_ids:
            first = first or now; last = now; n += len(ch.token_ids)
    after = {p: threads(p) for p in pids}
    refresh_names()
    return {"tok_s": (n - 1) / (last - first), "ttft_ms": (first - t0) * 1e3,
            "threads": {("host" if p == os.getpid() else "worker"): delta(before[p], after[p], n) for p in pids}}


sides = {"in": Runtime(engine="native"), "proc": Runtime(engine="native", isolation="process")}
for rt in sides.values():
    for _ in rt.stream(PROMPT, max_tokens=8, temperature=0): pass
w = next(x for x in sides["proc"].workers_info() if x["model"].startswith("generate"))
end = time.monotonic() + 60
while w["standby"] != "ready" and time.monotonic() < end:
    time.sleep(0.05); w = next(x for x in sides["proc"].workers_info() if x["model"].startswith("generate"))
log = open(w["log"]).read()
res = {"host_spin": os.environ.get("GOMP_SPINCOUNT"), "worker_log_head": [l for l in log.splitlines() if "GOMP" in l],
       "label": os.environ.get("DIAG_LABEL", ""), "load": os.getloadavg(), "rounds": []}
for i in range(ROUNDS):
    order = ["in", "proc"] if i % 2 == 0 else ["proc", "in"]
    for name in order:
        pids = [os.getpid()] + ([w["pid"]] if name == "proc" else [])
        r = stream(sides[name], f"({i}) {PROMPT}", pids)
        r["side"] = name
        res["rounds"].append(r)
        print(name, round(r["tok_s"], 1), round(r["ttft_ms"], 1), json.dumps(r["threads"]), file=sys.stderr, flush=True)
for rt in sides.values():
    rt.close()
ins = sorted(r["tok_s"] for r in res["rounds"] if r["side"] == "in")
pro = sorted(r["tok_s"] for r in res["rounds"] if r["side"] == "proc")
res["median"] = {"in": ins[len(ins) // 2], "proc": pro[len(pro) // 2]}
print(res["label"], "host spin", res["host_spin"], res["worker_log_head"], "median", res["median"],
      "ratio", round(res["median"]["proc"] / res["median"]["in"], 3), file=sys.stderr)
print(json.dumps(res))
