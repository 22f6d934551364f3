"""Fails when a non-test Rust function of the workspace is over 100 lines.

Reads every `.rs` file outside test directories, benches, fuzz targets and `target/`,
stops at a file's `#[cfg(test)]` module, and measures each `fn` from its signature to the
closing brace at the same indentation. Called by `.ci/run`; prints one line per function
over the bound.
"""

import os
import re
import sys

LIMIT = 100
SKIPPED = {"target", "tests", "benches", "fuzz", "node_modules", ".venv", ".git"}
FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")

root = sys.argv[1] if len(sys.argv) > 1 else "."
long = []
for directory, subdirectories, files in os.walk(root):
    subdirectories[:] = [name for name in subdirectories if name not in SKIPPED]
    for name in files:
        if not name.endswith(".rs"):
            continue
        path = os.path.join(directory, name)
        with open(path, encoding="utf-8") as file:
            lines = file.read().split("\n")
        for index, line in enumerate(lines):
            if line.startswith("#[cfg(test)]"):
                break
            match = FN.match(line)
            if not match or line.rstrip().endswith(";"):
                continue
            closing = match.group(1) + "}"
            end = index + 1
            while end < len(lines) and lines[end] != closing:
                end += 1
            length = end - index + 1
            if length > LIMIT:
                long.append(f"{path}:{index + 1}: fn {match.group(7)} is {length} lines")
for line in long:
    print(f"function length: {line} (at most {LIMIT}: split it by what each part does)", file=sys.stderr)
sys.exit(1 if long else 0)
