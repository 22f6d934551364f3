"""count_lines: reads {"paths": [...]} as JSON on stdin, prints {path: line count} as JSON."""
import json
import sys

counts = {}
for path in json.load(sys.stdin)["paths"]:
    with open(path, "rb") as file:
        counts[path] = sum(1 for _ in file)
json.dump(counts, sys.stdout)
