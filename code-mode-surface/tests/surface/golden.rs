//! Golden files: expected texts in `tests/golden/`, compared exactly. They change only
//! deliberately: run with `UPDATE_GOLDEN=1` to rewrite them, then review the diff.

use std::path::PathBuf;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
        .join(name)
}

/// Compares `actual` with the golden file `name` (or rewrites it under `UPDATE_GOLDEN=1`).
#[track_caller]
pub fn assert_golden(name: &str, actual: &str) {
    let path = path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write the golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "cannot read {}: {error} (create it with UPDATE_GOLDEN=1)",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .map_or_else(
                || "the length".to_owned(),
                |index| format!("line {}", index + 1),
            );
        panic!(
            "{} differs from the output at {line} (rerun with UPDATE_GOLDEN=1 to accept, then review the diff)\n--- actual ---\n{actual}",
            path.display()
        );
    }
}
