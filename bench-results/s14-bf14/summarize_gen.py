"""One line per bench generate JSON here: prompt and decode tok/s of both sides and the ratios."""
import glob, json, sys
for f in sorted(glob.glob(sys.argv[1] if len(sys.argv) > 1 else "gen-*.json")):
    try:
        d = json.load(open(f))
    except ValueError:
        continue
    c, r = d["corert"], d["raw"]
    print(f"{f}: prompt {c['prompt_tok_s']:.1f} vs raw {r['prompt_tok_s']:.1f} ({d['prompt_ratio']:.3f}x), "
          f"decode {c['decode_tok_s']:.1f} vs {r['decode_tok_s']:.1f} ({d['decode_ratio']:.3f}x), "
          f"identical {d['identical_output_rounds']}")
