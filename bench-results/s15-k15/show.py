import sys, json
for l in sys.stdin:
    try: r = json.loads(l)
    except Exception: print(l.strip()); continue
    print(r['case'], {k[:-10]: round(v, 2) for k, v in r.items() if k.endswith('_median_ms')}, {k[:-6]: round(v, 3) for k, v in r.items() if k.endswith('_ratio')}, all(r['same_bits_as_first'].values()))
