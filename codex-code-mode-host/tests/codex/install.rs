//! `install`, `check` and `uninstall` on copies of codex's layouts: npm's tree (launcher
//! and platform package) and a plain directory with codex and its host side by side.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(args: &[&str], codex: &Path) -> (bool, String) {
    let output = Command::new(crate::our_host())
        .args(args)
        .arg("--codex")
        .arg(codex)
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn link(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap();
    }
}

fn scratch(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("install-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

#[test]
fn npm_layout_round_trip_leaves_codexs_files_alone() {
    let package = crate::codex_package();
    let root = scratch("npm");
    let modules = root.join("node_modules/@openai");
    let npm = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/codex-npm/node_modules/@openai/codex");
    link(
        &npm.join("bin/codex.js"),
        &modules.join("codex/bin/codex.js"),
    );
    let vendor = modules.join("codex-linux-x64/vendor/x86_64-unknown-linux-musl");
    for file in [
        "bin/codex",
        "bin/codex-code-mode-host",
        "codex-package.json",
    ] {
        link(&package.join(file), &vendor.join(file));
    }
    let launcher = modules.join("codex/bin/codex.js");
    let (ok, text) = run(&["--check"], &launcher);
    assert!(ok, "{text}");
    assert!(
        text.contains("bin/codex-code-mode-host (codex's own host)"),
        "{text}"
    );

    let (ok, text) = run(&["install"], &launcher);
    assert!(ok, "{text}");
    let ours = vendor.join("codex-resources/codex-code-mode-host");
    // One file: the host carries its runtime.
    assert!(ours.is_file(), "{text}");
    assert_eq!(
        std::fs::read_dir(vendor.join("codex-resources"))
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with('.'))
            .collect::<Vec<_>>(),
        ["codex-code-mode-host"],
        "{text}"
    );
    let (_, text) = run(&["check"], &launcher);
    assert!(
        text.contains("codex-resources/codex-code-mode-host (this code-mode host)"),
        "{text}"
    );
    // Installing again is fine, and still ours.
    let (ok, text) = run(&["install"], &launcher);
    assert!(ok, "{text}");

    let (ok, text) = run(&["uninstall"], &launcher);
    assert!(ok, "{text}");
    assert!(!ours.exists());
    assert!(
        vendor.join("bin/codex-code-mode-host").is_file(),
        "codex's own host was never touched"
    );
    let (_, text) = run(&["--check"], &launcher);
    assert!(text.contains("(codex's own host)"), "{text}");
    let (ok, text) = run(&["uninstall"], &launcher);
    assert!(
        !ok && text.contains("nothing of ours is installed"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn plain_layout_keeps_the_original_and_puts_it_back() {
    let package = crate::codex_package();
    let root = scratch("plain");
    link(&package.join("bin/codex"), &root.join("codex"));
    link(
        &package.join("bin/codex-code-mode-host"),
        &root.join("codex-code-mode-host"),
    );
    let original_len = std::fs::metadata(root.join("codex-code-mode-host"))
        .unwrap()
        .len();
    let (ok, text) = run(&["install"], &root.join("codex"));
    assert!(ok, "{text}");
    assert!(root.join("codex-code-mode-host.codex-original").is_file());
    let (_, text) = run(&["--check"], &root.join("codex"));
    assert!(text.contains("(this code-mode host)"), "{text}");
    let (ok, text) = run(&["uninstall"], &root.join("codex"));
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::metadata(root.join("codex-code-mode-host"))
            .unwrap()
            .len(),
        original_len,
        "the original is back"
    );
    assert!(!root.join("code-mode-bin").exists());
    let (ok, text) = run(&["--check"], &root.join("no-such-codex"));
    assert!(!ok && text.contains("does not exist"), "{text}");
    let _ = std::fs::remove_dir_all(&root);
}
