"""Ad-hoc: CPU ms per token of the corert serve host process and its worker, 8 clients x 128 tokens."""
import argparse, contextlib, json, os, sys, time
from corert.tools.bench import serve as S
from corert.tools.bench.server_procs import start_all
from corert.tools.bench.stream_client import concurrent_streams
from corert.models.store import ModelStore
from corert.runtime import RuntimeConfig

ap = argparse.ArgumentParser()
ap.add_argument("--side", default="corert-native")
ap.add_argument("--clients", type=int, default=8)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--max-tokens", type=int, default=128)
ap.add_argument("--pyspy", default="")
a = ap.parse_args()
path = str(ModelStore().resolve(RuntimeConfig.from_env(None).model))
args = argparse.Namespace(threads=2, ctx=None, start_timeout=1200, llama_server=None, plugin=[], set=[], config=None, isolation=None, kv_budget=None)
sides = S.build_sides([a.side], path, 2, args)
TCK = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TCK
def tcpu(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            f = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
            out[int(t)] = (int(f[11]) + int(f[12])) / TCK
        except OSError: pass
    return out
def children(pid):
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try: out += [int(x) for x in open(f"/proc/{pid}/task/{t}/children").read().split()]
        except OSError: pass
    return out
with contextlib.ExitStack() as stack:
    procs = start_all([s.spec for s in sides], stack)
    port = procs[a.side].port
    mid = S._model_id(port)
    bodies = lambda n, m: [S._body(mid, S.PROMPTS[i], m, sides[0].extra_body) for i in range(n)]
    for n in (1, 2, a.clients):
        concurrent_streams(port, "/v1/completions", bodies(n, 8), timeout=600)
    host = procs[a.side].proc.pid
    kids = children(host)
    print("host", host, "kids", kids, file=sys.stderr)
    spies = []
    if a.pyspy:
        import subprocess
        for name, p in [("host", host)] + [(f"w{k}", k) for k in kids]:
            spies.append(subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "-p", str(p), "-r", "200", "-f", "raw",
                                           "-o", f"{a.pyspy}-{name}.txt", "--nonblocking"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1)
    res = []
    for r in range(a.rounds):
        h0, k0, th0, w0 = cpu(host), sum(cpu(k) for k in kids), tcpu(host), tcpu(kids[0])
        rnd = concurrent_streams(port, "/v1/completions", bodies(a.clients, a.max_tokens), timeout=600)
        h1, k1, th1, w1 = cpu(host), sum(cpu(k) for k in kids), tcpu(host), tcpu(kids[0])
        toks = sum(x.tokens for x in rnd.replies)
        ttft = sorted(x.ttft for x in rnd.replies if x.ttft is not None)
        res.append({"tok_s": round(toks / rnd.wall_s, 1), "host_ms_tok": round((h1 - h0) * 1e3 / toks, 3),
                    "worker_ms_tok": round((k1 - k0) * 1e3 / toks, 3), "tokens": toks,
                    "ttft_max_ms": round(ttft[-1] * 1e3, 1) if ttft else None})
        res[-1]["threads_ms_tok"] = {t: round((th1[t] - th0.get(t, 0)) * 1e3 / toks, 3) for t in th1 if th1[t] - th0.get(t, 0) > 0}
        res[-1]["worker_threads_ms_tok"] = {t: round((w1[t] - w0.get(t, 0)) * 1e3 / toks, 3) for t in w1 if w1[t] - w0.get(t, 0) > 0}
        print(res[-1], file=sys.stderr)
    import subprocess
    for p in (host, kids[0]):
        print(subprocess.run([os.path.join(os.path.dirname(sys.executable), "py-spy"), "dump", "-p", str(p)], capture_output=True, text=True).stdout, file=sys.stderr)
    for s in spies:
        s.send_signal(2); s.wait(30)
print(json.dumps({"side": a.side, "clients": a.clients, "load": os.getloadavg(), "rounds": res}))
