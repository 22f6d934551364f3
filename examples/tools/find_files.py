"""find_files: reads {"root", "suffix"} as JSON on stdin, prints the matching paths as JSON."""
import json
import os
import sys

request = json.load(sys.stdin)
root, suffix = request["root"], request["suffix"]
if not os.path.isdir(root):
    sys.exit(f"not a directory: {root}")
found = []
for directory, subdirectories, files in os.walk(root):
    subdirectories[:] = sorted(d for d in subdirectories if d != "target" and not d.startswith("."))
    found.extend(os.path.join(directory, name) for name in sorted(files) if name.endswith(suffix))
json.dump(found, sys.stdout)
