"""One line per bench generate JSON: corert and raw prompt / decode tok/s and the ratios (median, range)."""
import json, sys
for p in sys.argv[1:]:
    d = json.load(open(p))
    c, r = d["corert"], d["raw"]
    print(f"{p}: prompt {c['prompt_tok_s']:.1f} vs raw {r['prompt_tok_s']:.1f} = {d['prompt_ratio']:.3f}x "
          f"({d['prompt_ratio_range'][0]:.3f}-{d['prompt_ratio_range'][1]:.3f}); decode {c['decode_tok_s']:.1f} vs "
          f"{r['decode_tok_s']:.1f} = {d['decode_ratio']:.3f}x")
