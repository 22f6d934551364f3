// Shared by the build scripts of the executables that start a runtime process
// (`code-mode-bin`, `codex-code-mode-host`), with `include!`.

/// Links the package's executables with packed relative relocations (`DT_RELR`) when the
/// toolchain can: a position-independent executable that carries V8 has about 200 000
/// relative relocations, which the dynamic loader reads from a 5 MB table at every start;
/// packed, the table is some 20 KB, and a start of the process (a runtime's, on a cold
/// start's path) is about a fifth of a millisecond shorter. Checked by linking a probe
/// with the C compiler cargo links with; only for a native Linux build (a cross build
/// keeps the usual relocations).
fn pack_relative_relocations() {
    println!("cargo:rerun-if-env-changed=CC");
    let native = std::env::var("TARGET").ok() == std::env::var("HOST").ok();
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    let Some(out) = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from) else {
        return;
    };
    if !native || !linux_gnu {
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
