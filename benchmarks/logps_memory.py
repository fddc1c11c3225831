"""Print the extra peak memory and time of `sequence_logps` beside a naive log_softmax + gather.

python benchmarks/logps_memory.py                 # B=8 T=512 V=32000 float32 on CPU
python benchmarks/logps_memory.py --device cuda --json out.json
"""

import argparse

from dpo_ref.bench.logps import format_table, run
from dpo_ref.docgen.results import check_results_path, machine, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="sequences (default 8)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats, the median is kept (default 5)")
    parser.add_argument("--json", help="also write the results and the machine as JSON to this path")
    args = parser.parse_args()
    if args.json:
        check_results_path(args.json)
    before = machine()
    result = run(args.batch, args.seq_len, args.vocab, args.device, args.repeats)
    print(format_table(result))
    if args.json:
        import torch

        write_results(args.json, {"machine": {**before, "torch": torch.__version__}, **result})


if __name__ == "__main__":
    main()
