// Shared by the build scripts of the executables that start a runtime process
// (`code-mode-bin`, `codex-code-mode-host`), with `include!`: how they are linked.

/// Whether this is a native build for Linux with glibc: the only one the flags below are
/// checked for (a cross build links as usual).
fn native_linux_gnu() -> bool {
    let native = std::env::var("TARGET").ok() == std::env::var("HOST").ok();
    native
        && std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
}

/// Links the package's executables with packed relative relocations (`DT_RELR`) when the
/// toolchain can: a position-independent executable that carries V8 has about 200 000
/// relative relocations, which the dynamic loader reads from a 5 MB table at every start;
/// packed, the table is some 20 KB, and a start of the process (a runtime's, on a cold
/// start's path) is about a fifth of a millisecond shorter. Checked by linking a probe
/// with the C compiler cargo links with.
fn pack_relative_relocations() {
    println!("cargo:rerun-if-env-changed=CC");
    let Some(out) = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from) else {
        return;
    };
    if !native_linux_gnu() {
        return;
    }
    let probe = out.join("relr-probe.c");
    if std::fs::write(&probe, "int main(void) { return 0; }\n").is_err() {
        return;
    }
    let compiler = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let linked = std::process::Command::new(compiler)
        .arg(&probe)
        .args(["-fPIE", "-pie", "-Wl,-z,pack-relative-relocs", "-o"])
        .arg(out.join("relr-probe"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if linked {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Places the functions a cold start runs (listed in `order`, one symbol per line, in the
/// order they first run) together at the start of the executable's code, when the linker
/// is rustc's own `lld`. A cold start then maps fewer pages of code: each process faults
/// in the pages of code it runs, and V8's start alone runs some two thousand functions
/// scattered over 45 MB. A name the build does not have is skipped, so a list made by an
/// older build only places fewer functions. `scripts/startup-order.py` makes the list.
///
/// Only where rustc links with its own `lld` (the default for `x86_64-unknown-linux-gnu`
/// since Rust 1.90), as GNU `ld` knows no such option: not when the build names another
/// linker or linker flavour, and not with `CODE_MODE_STARTUP_ORDER=0`.
///
/// The package's tests get `CODE_MODE_STARTUP_ORDERED`: `1` where the functions were
/// placed, else why not, so that the test of the placement fails saying so.
fn order_startup_functions(order: &std::path::Path) {
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=CODE_MODE_STARTUP_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let not_placed = if std::env::var("CODE_MODE_STARTUP_ORDER").as_deref() == Ok("0") {
        Some("CODE_MODE_STARTUP_ORDER=0")
    } else if !native_linux_gnu() {
        Some("not a native build for Linux with glibc")
    } else if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64") {
        Some("not x86_64")
    } else if std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some() {
        Some("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER names another linker")
    } else if !rustc_links_with_lld() {
        Some("rustc does not link with its own lld (before Rust 1.90, or the flags name a linker)")
    } else if !order.is_file() {
        Some("no startup-order.txt")
    } else {
        None
    };
    if let Some(why) = not_placed {
        println!("cargo:rustc-env=CODE_MODE_STARTUP_ORDERED=not placed: {why}");
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    println!("cargo:rustc-env=CODE_MODE_STARTUP_ORDERED=1");
}

/// Whether rustc links with its own `lld`: Rust 1.90 or later, with no flag that names a
/// linker, a linker flavour or linker features of its own.
fn rustc_links_with_lld() -> bool {
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let names_a_linker = flags.split('\x1f').any(|flag| {
        ["linker", "link-self-contained", "fuse-ld"]
            .iter()
            .any(|word| flag.contains(word))
    });
    if names_a_linker {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(output) = std::process::Command::new(rustc).arg("-V").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&output.stdout);
    let mut numbers = version
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split(['.', '-'])
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
