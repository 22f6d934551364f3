//! V8 process-wide initialisation: ICU data, flags and the platform, exactly once.
//!
//! Called by [`crate::spawn_cell`] on first use, and meant to be called early by a binary
//! (the runtime process starts it on a thread of its own while it parses its arguments).
//! Nothing else in the crate touches V8 globals.

use std::sync::OnceLock;

static PLATFORM: OnceLock<v8::SharedRef<v8::Platform>> = OnceLock::new();

/// The V8 flags this process runs with (a startup snapshot must match them).
pub(crate) const V8_FLAGS: &str = "--no-memory-pool-share-memory-on-teardown";

/// Initialises V8 for this process: ICU data first (so `Intl` has real locale data), then
/// the platform. Idempotent and thread-safe; later calls return at once.
///
/// # Panics
/// If the bundled ICU data is rejected by ICU, which would mean a broken build.
pub fn init_v8() {
    platform();
}

/// Starts [`init_v8`] on a thread of its own and returns at once, for a process that has
/// other work before it needs V8 (its arguments, its logs, the snapshot cache's file): the
/// next [`init_v8`] waits for it. Does nothing once V8 is started; if no thread can be
/// made, the next [`init_v8`] initialises V8 itself. Its platform threads are made on that
/// thread, with the restrictions it has then.
pub fn start_v8() {
    start_v8_with(spawn_v8_thread);
}

/// Starts a thread of its own (`code-mode-v8`) that runs [`init_v8`]; without one, the next
/// [`init_v8`] initialises V8 itself.
pub(crate) fn spawn_v8_thread() {
    let _ = std::thread::Builder::new()
        .name("code-mode-v8".to_owned())
        .spawn(init_v8);
}

/// [`start_v8`] by `spawn`, which starts a thread that calls [`init_v8`] first thing (and
/// may then do more: the first cell thread does, `crate::runtime::start_v8_on_cell_thread`).
/// Like [`start_v8`], it does nothing once V8 is started or starting.
pub(crate) fn start_v8_with(spawn: impl FnOnce()) {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        if PLATFORM.get().is_none() {
            spawn();
        }
    });
}

/// The process's V8 platform, initialising V8 on first use.
pub(crate) fn platform() -> &'static v8::SharedRef<v8::Platform> {
    PLATFORM.get_or_init(|| {
        if let Err(code) = v8::icu::set_common_data_78(deno_core_icudata::ICU_DATA) {
            panic!("the bundled ICU data was rejected by ICU (error code {code})");
        }
        // Zero worker threads means "as many as V8 sees fit" for background GC and
        // compilation; idle tasks are not used.
        // An isolate torn down frees its pages instead of handing them to V8's
        // process-wide page pool: after a burst of cells (hundreds of isolates) the pool
        // kept its pages for good, and an idle runtime stayed several times its resting
        // size (`exec_overhead --sections idle`; the figures are in BENCHMARKS).
        v8::V8::set_flags_from_string(V8_FLAGS);
        // V8 seeds each isolate's generator (its hash seed among others) from /dev/urandom,
        // which the runtime's sandbox forbids, and falls back to the clock when it cannot
        // open it: the kernel's getrandom, which the sandbox allows, is asked instead.
        v8::V8::set_entropy_source(entropy);
        let platform = v8::new_default_platform(0, false).make_shared();
        v8::V8::initialize_platform(platform.clone());
        v8::V8::initialize();
        tracing::debug!("V8 {} initialised", v8::V8::get_version());
        platform
    })
}

/// Fills `buffer` from the kernel's random source (getrandom(2), blocking until the pool
/// is ready); `false` if it cannot.
fn entropy(buffer: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buffer.len() {
        let rest = &mut buffer[filled..];
        // SAFETY: getrandom(2) writes at most `rest.len()` bytes into `rest`.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(got) {
            Ok(got) => filled += got,
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_fills_the_whole_buffer_with_fresh_bytes_each_time() {
        // A length that is not a multiple of 8, filled to its last byte (7 zero bytes by
        // chance: 2^-56), and two calls that differ.
        let mut first = [0u8; 67];
        let mut second = [0u8; 67];
        assert!(entropy(&mut first));
        assert!(entropy(&mut second));
        assert_ne!(first[60..], [0u8; 7], "the tail is filled");
        assert_ne!(first, [0u8; 67]);
        assert_ne!(first, second);
        assert!(entropy(&mut []));
    }
}
