#!/usr/bin/env python3
"""bench/callgrind_calls.py FN,FN... FILE... - from callgrind output files
(one per thread with --separate-threads=yes), the instructions (Ir, the
events' summary) and the number of calls made to each function FN (calls=
lines whose callee is FN): a line per file with any instructions, then the total."""
import re
import sys

wanted = sys.argv[1].split(",")

def count(path):
    names = {}
    calls = {w: 0 for w in wanted}
    total = 0
    cfn = None

    def name_of(spec):
        m = re.match(r"\((\d+)\)(?: (.*))?", spec)
        if not m:
            return spec
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "?")

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("cfn="):
                cfn = name_of(line[4:])
            elif line.startswith("fn="):
                name_of(line[3:])
            elif line.startswith("calls="):
                if cfn in wanted:
                    calls[cfn] += int(line[6:].split()[0])
            elif line.startswith("summary:") or line.startswith("totals:"):
                total = max(total, int(line.split()[1]))
    return total, calls


sums = {w: 0 for w in wanted}
sum_ir = 0
for path in sys.argv[2:]:
    ir, calls = count(path)
    if not ir:
        continue
    sum_ir += ir
    for w in wanted:
        sums[w] += calls[w]
    print(path.rsplit("/", 1)[-1], "Ir", ir, " ".join(f"{w} {calls[w]}" for w in wanted))
print("total", "Ir", sum_ir, " ".join(f"{w} {sums[w]}" for w in wanted))
