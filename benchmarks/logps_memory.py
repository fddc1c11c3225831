"""Print the extra peak memory and time of `sequence_logps` beside a naive log_softmax + gather.

python benchmarks/logps_memory.py                 # B=8 T=512 V=32000 float32 on CPU
python benchmarks/logps_memory.py --device cuda --json out.json
"""

import argparse
import json

from dpo_ref.bench_logps import format_table, run

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--batch", type=int, default=8)
parser.add_argument("--seq-len", type=int, default=512)
parser.add_argument("--vocab", type=int, default=32000)
parser.add_argument("--device", default="cpu")
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--json", help="also write the results as JSON to this path")
args = parser.parse_args()
result = run(args.batch, args.seq_len, args.vocab, args.device, args.repeats)
print(format_table(result))
if args.json:
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
