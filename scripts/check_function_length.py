"""Fails when a non-test Rust function of the workspace is over 100 lines.

Reads every `.rs` file outside test directories (`tests/`), benches, fuzz targets and
`target/`, as tokens (scripts/rust_source.py: comments and string literals are not code),
and measures every `fn` with a body from the line of its `fn` to the line of the brace that
closes its body, nested functions included (each is measured itself too).

Test code is exempt, as it has always been: a function inside an item under
`#[cfg(test)]` (a `mod tests { … }`, an impl, the function itself), and every function of a
file that is a test module (declared `#[cfg(test)] mod name;`, with its own submodules).
Test functions over the bound are listed apart, after the others, and do not fail the
check. Called by `.ci/run`; prints one line per function over the bound and exits 1 if a
non-test one is.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rust_source  # noqa: E402 (the helper beside this script)

LIMIT = 100
SKIPPED = {"target", "tests", "benches", "fuzz", "node_modules", ".venv", ".git"}


def functions(toks: list):
    """(name, first line, last line, token index) of each `fn` with a body."""
    for i, t in enumerate(toks[:-1]):
        if t.kind != "id" or t.text != "fn" or toks[i + 1].kind != "id":
            continue
        # The body is the first `{` outside the signature's parentheses and brackets; a `;`
        # there first means a declaration (a trait's method, an extern function).
        depth, j = 0, i + 2
        while j < len(toks):
            text = toks[j].text if toks[j].kind == "p" else ""
            if text in ("(", "["):
                depth += 1
            elif text in (")", "]"):
                depth -= 1
            elif depth == 0 and text in ("{", ";"):
                break
            j += 1
        if j < len(toks) and toks[j].text == "{":
            yield toks[i + 1].text, t.line, toks[rust_source.matching(toks, j)].line, i


def child_directory(path: str) -> str:
    """Where the files of the modules `path` declares live."""
    directory, name = os.path.split(path)
    if name in ("lib.rs", "main.rs", "mod.rs"):
        return directory
    return os.path.join(directory, name[: -len(".rs")])


def test_module_files(path: str, toks: list) -> list:
    """The files (or directories of files) of the modules `path` declares test-only
    (`#[cfg(test)] mod name;`, or with `#[path = "…"]`)."""
    found = []
    for first, last in rust_source.test_spans(toks):
        item = toks[first : last + 1]
        if len(item) < 3 or item[-1].text != ";" or item[-3].text != "mod":
            continue
        name = item[-2].text
        declared = None
        for k, t in enumerate(item[:-2]):
            if t.text == "path" and item[k + 1].text == "=":
                declared = os.path.join(os.path.dirname(path), item[k + 2].text.strip('"'))
        if declared is not None:
            found.append(declared)
        else:
            base = os.path.join(child_directory(path), name)
            found += [base + ".rs", base]
    return found


def is_under(path: str, tests: set) -> bool:
    """Whether `path` is one of `tests` or inside one of them (a test module's submodules)."""
    while True:
        if path in tests:
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


def main() -> int:
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    read = {}
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if name not in SKIPPED)
        for name in sorted(files):
            if name.endswith(".rs"):
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8") as file:
                    read[path] = rust_source.tokens(file.read())
    tests = set()
    for path, toks in read.items():
        tests.update(os.path.normpath(p) for p in test_module_files(path, toks))
    long, long_tests = [], []
    for path, toks in read.items():
        spans = rust_source.test_spans(toks)
        test_file = is_under(os.path.normpath(path), tests)
        for name, first, last, index in functions(toks):
            length = last - first + 1
            if length <= LIMIT:
                continue
            line = f"{path}:{first}: fn {name} is {length} lines"
            if test_file or any(a <= index <= b for a, b in spans):
                long_tests.append(line)
            else:
                long.append(line)
    for line in long:
        print(f"function length: {line} (at most {LIMIT}: split it by what each part does)", file=sys.stderr)
    for line in long_tests:
        print(f"function length, test code (not failing): {line}", file=sys.stderr)
    return 1 if long else 0


if __name__ == "__main__":
    sys.exit(main())
