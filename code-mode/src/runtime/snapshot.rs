//! The startup snapshot of a cell's context: a V8 startup blob whose default
//! context already holds every helper that does not depend on the cell, made and ready,
//! as the context's data. A fresh context is V8's deserialisation of it, then fourteen
//! property definitions on its global object ([`define_snapshot_helpers`]). They are not
//! defined in the snapshot itself: V8 finishes each context it deserialises by installing
//! its newer features, some on globals a cell must not have (`Atomics.pause`), and new
//! globals after those already there, so the helpers would come before them in the
//! global object's key order where a built context has them after.
//!
//! The blob is made once per process, on a thread of its own started by the prewarm (or by
//! the first isolate prepared) that first lets the first cell isolate be prepared (at most
//! 30 ms), so that the two do not share the cores, by a V8 `SnapshotCreator` running
//! [`super::helpers::new_helpers`] in its default context. Nothing waits for it: isolates
//! prepared before it is there build their contexts by hand, and are not parked for reuse
//! once it is (the pool's keeper waits for the blob, [`wait_made`], and then replaces the
//! prepared threads it built by hand). A runtime process given a cache directory reads the
//! blob from there instead, or makes it at start and writes it there ([`use_disk_cache`]):
//! only a blob of this very executable, made with the same V8 flags (which a blob must
//! match), is read. The helpers' native callbacks are registered as external references, in
//! one list ([`super::helpers::external_references`]) given both to the creator and to
//! every isolate created from the blob; a blob names them by their place in that list, not
//! by address, so a blob of another process of the same executable fits.
//!
//! A context from the blob and one built by hand are the same to a cell: the same globals
//! with the same attributes, the same helpers, nothing shared (each context deserialises
//! objects of its own). The runtime's tests compare the two paths cell by cell. Setting
//! `CODE_MODE_CONTEXT_SNAPSHOT=off` in the environment of the process that runs cells
//! builds every context by hand, to measure the difference (a runtime process started by
//! `ProcessProvider` gets an empty environment, so this reaches in-process sessions and
//! runtimes started by hand); a blob that cannot be made does the same, with a warning.

use code_mode_internal::sync::lock;
use std::borrow::Cow;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// The environment variable that turns the snapshot off (`off`, `0` or `false`).
pub const CONTEXT_SNAPSHOT_ENV: &str = "CODE_MODE_CONTEXT_SNAPSHOT";

/// How a cell's fresh context gets its helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextSource {
    /// Deserialised from the process's startup snapshot, helpers included.
    Snapshot,
    /// V8's own context, the helpers installed by hand.
    Built,
}

impl ContextSource {
    /// The source for a new isolate: the snapshot, unless turned off or unavailable, or
    /// not made yet. Never waits for the blob: the first isolates of a process (the first
    /// cell's among them) are built by hand while the blob is being made beside them,
    /// instead of waiting for it.
    pub fn preferred() -> Self {
        if turned_off() {
            return ContextSource::Built;
        }
        match BLOB.get() {
            Some(Some(_)) => ContextSource::Snapshot,
            Some(None) => ContextSource::Built,
            None => {
                start_making();
                ContextSource::Built
            }
        }
    }
}

/// Waits until the process's blob is made (or known impossible), starting it if needed.
/// Returns at once when the snapshot is turned off.
pub(crate) fn wait_made() {
    if turned_off() {
        return;
    }
    start_making();
    BLOB.wait();
}

/// Whether [`CONTEXT_SNAPSHOT_ENV`] turns the snapshot off.
fn turned_off() -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    *OFF.get_or_init(|| {
        std::env::var(CONTEXT_SNAPSHOT_ENV)
            .is_ok_and(|value| matches!(value.as_str(), "off" | "0" | "false"))
    })
}

/// Set once the first cell isolate of the process is prepared.
static FIRST_PREPARED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// How long the blob waits for the first cell isolate to be prepared before it is made.
const FIRST_ISOLATE_PATIENCE: Duration = Duration::from_millis(30);

/// Tells the blob's thread that a cell isolate is prepared: the first cell's need not
/// share the cores with the blob's making, which waits for it.
pub(crate) fn note_isolate_prepared() {
    let (prepared, changed) = &FIRST_PREPARED;
    let mut prepared = lock(prepared);
    if !*prepared {
        *prepared = true;
        changed.notify_all();
    }
}

/// Waits until a cell isolate is prepared, or [`FIRST_ISOLATE_PATIENCE`] has passed.
fn wait_for_first_isolate() {
    let (prepared, changed) = &FIRST_PREPARED;
    let guard = lock(prepared);
    let _ = changed
        .wait_timeout_while(guard, FIRST_ISOLATE_PATIENCE, |prepared| !*prepared)
        .unwrap_or_else(PoisonError::into_inner);
}

/// Starts making the process's blob on a thread of its own, once. The thread first lets
/// the first cell isolate be prepared (see [`note_isolate_prepared`]).
pub(crate) fn start_making() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    // A blob read from the disk cache needs no thread (one fewer on a cold start's path).
    if BLOB.get().is_some() {
        return;
    }
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("code-mode-snapshot".to_owned())
            .spawn(|| {
                wait_for_first_isolate();
                blob();
            });
        if let Err(error) = spawned {
            tracing::warn!("cannot start making the startup snapshot: {error}");
            // Contexts are built by hand, and nothing waits for a blob that never comes.
            let _ = BLOB.set(None);
        }
    });
}

/// The blob and the external references it was made with, both alive for the process.
struct Blob {
    data: v8::StartupData,
    references: &'static [v8::ExternalReference],
}

// SAFETY: the references are the addresses of native functions (code, never written) and
// the data is V8's blob, owned here and never mutated; sharing them between threads is
// sound.
unsafe impl Sync for Blob {}
// SAFETY: as above: nothing in `Blob` is tied to the thread that made it.
unsafe impl Send for Blob {}

/// The process's blob, once made (`None` inside when V8 could not make one).
static BLOB: OnceLock<Option<Blob>> = OnceLock::new();

/// What [`use_disk_cache`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// The blob was read from the cache: no snapshot is made in this process.
    Loaded(std::path::PathBuf),
    /// None could be trusted: the blob was made now and written there.
    Written(std::path::PathBuf),
    /// The blob was made now, but could not be written (the reason).
    NotWritten(String),
    /// No blob: the snapshot is turned off, or V8 made none.
    Unused,
}

/// Takes the process's startup snapshot from `dir` when a blob this executable made is
/// there and whole, else makes it now and writes it there for the next process (the file
/// carries a key of this executable, V8's version and flags, and the blob's checksum, all
/// checked before V8 sees a byte). Call it once, early, before the first cell and before a
/// sandbox forbids file access; cells then never build a context by hand, and the blob is
/// not made again in the background.
///
/// The file read is mapped for the rest of the process, not copied: V8 reads it at every
/// isolate's start. This module only ever replaces a cache file whole (a rename), which
/// leaves a mapping as it was; a file truncated in place by another process of this user
/// would end this one with `SIGBUS` at its next isolate. A runtime process that ends so is
/// replaced, and the next one finds the file short and makes the blob again.
pub fn use_disk_cache(dir: &std::path::Path) -> CacheOutcome {
    if turned_off() {
        return CacheOutcome::Unused;
    }
    // Reading and checking the file, and taking its blob, need no V8 (its version is a
    // constant): it is done here while V8 starts on a thread of its own (started now if
    // the caller did not), off a cold start's path. Only a blob to make waits for V8.
    crate::platform::start_v8();
    let (key, bytes) = match read_cache(dir) {
        Ok(read) => read,
        Err(error) => return CacheOutcome::NotWritten(error),
    };
    let path = super::snapshot_cache::path(dir, &key);
    if BLOB.get().is_none()
        && let Some(bytes) = bytes
    {
        let loaded = Blob {
            data: v8::StartupData::from(bytes.into_static()),
            references: external_references(),
        };
        if BLOB.set(Some(loaded)).is_ok() {
            return CacheOutcome::Loaded(path);
        }
    }
    match blob() {
        Some(made) => match super::snapshot_cache::write(dir, &key, &made.data) {
            Ok(()) => CacheOutcome::Written(path),
            Err(error) => CacheOutcome::NotWritten(format!("{}: {error}", path.display())),
        },
        None => CacheOutcome::Unused,
    }
}

/// This executable's cache key and the blob `dir` holds for it, if one is there and whole.
fn read_cache(
    dir: &std::path::Path,
) -> Result<
    (
        super::snapshot_cache::Key,
        Option<super::snapshot_cache::CachedBlob>,
    ),
    String,
> {
    let key = super::snapshot_cache::key(v8::V8::get_version(), crate::platform::V8_FLAGS)
        .map_err(|error| format!("cannot identify this executable: {error}"))?;
    let bytes = super::snapshot_cache::read(dir, &key);
    Ok((key, bytes))
}

/// The helpers' external references, null-terminated, alive for the process.
fn external_references() -> &'static [v8::ExternalReference] {
    let mut references = super::helpers::external_references();
    // V8 reads the list up to a null entry; with it in place no copy is made per isolate.
    references.push(v8::ExternalReference {
        pointer: std::ptr::null_mut(),
    });
    Box::leak(references.into_boxed_slice())
}

/// The process's blob, made on first use; `None` when V8 could not make one.
fn blob() -> Option<&'static Blob> {
    BLOB.get_or_init(|| {
        crate::platform::init_v8();
        let made = make();
        if made.is_none() {
            tracing::warn!("V8 made no startup snapshot; cell contexts are built by hand");
        }
        made
    })
    .as_ref()
}

/// Runs a `SnapshotCreator` over a context with the base helpers.
fn make() -> Option<Blob> {
    let started = std::time::Instant::now();
    let references = external_references();
    // The isolates of a process share one read-only heap, set up by the first isolate from
    // its blob. A creator that came first would set it up itself and grow it, and the
    // read-only part of its blob would then differ from V8's own: isolates of the two
    // blobs could not live side by side. With an isolate of V8's blob alive, the creator
    // shares the read-only heap as it is, and its blob refers to exactly that.
    let _first = v8::Isolate::new(v8::CreateParams::default());
    let mut creator = v8::Isolate::snapshot_creator(Some(Cow::Borrowed(references)), None);
    {
        v8::scope!(let scope, &mut creator);
        let context = v8::Context::new(scope, Default::default());
        let scope = &mut v8::ContextScope::new(scope, context);
        let helpers = super::helpers::new_helpers(scope);
        let helpers = v8::Array::new_with_elements(scope, &helpers);
        let index = scope.add_context_data(context, helpers);
        debug_assert_eq!(index, HELPERS_DATA_INDEX);
        scope.set_default_context(context);
    }
    super::helpers::forget_isolate_cache(&mut creator);
    let blob = creator.create_blob(v8::FunctionCodeHandling::Keep)?;
    if !blob.is_valid() {
        return None;
    }
    if !blob.can_be_rehashed() {
        tracing::warn!("the startup snapshot cannot be rehashed: isolates share its hash seed");
    }
    tracing::debug!(
        bytes = blob.len(),
        took = ?started.elapsed(),
        "startup snapshot of the cell context made"
    );
    Some(Blob {
        data: blob,
        references,
    })
}

/// Where the snapshot's context keeps its helpers (the first data added to it).
const HELPERS_DATA_INDEX: usize = 0;

/// Defines the helpers a context deserialised from the blob carries as its data (see
/// [`super::helpers::new_helpers`]). Call it once, on a fresh context, before any cell
/// code; `false` if the context had none (it was not made from the blob).
pub(crate) fn define_snapshot_helpers(
    scope: &mut v8::PinScope<'_, '_>,
    surface: code_mode_protocol::Surface,
) -> bool {
    let Ok(helpers) = scope.get_context_data_from_snapshot_once::<v8::Array>(HELPERS_DATA_INDEX)
    else {
        return false;
    };
    let helpers = (0..helpers.length())
        .filter_map(|index| helpers.get_index(scope, index))
        .collect::<Vec<_>>();
    super::helpers::define_helpers(scope, &helpers, surface);
    true
}

/// `params` for an isolate whose contexts come from `source`.
pub(crate) fn isolate_params(params: v8::CreateParams, source: ContextSource) -> v8::CreateParams {
    // The blob is asked for only for the snapshot: one built by hand never waits for it.
    match source {
        ContextSource::Snapshot => match blob() {
            Some(blob) => params
                .snapshot_blob(v8::StartupData::from(&*blob.data))
                .external_references(Cow::Borrowed(blob.references)),
            None => params,
        },
        ContextSource::Built => params,
    }
}

/// Whether an isolate asked for `source` really has the snapshot (it falls back to
/// building contexts by hand when no blob could be made).
pub(crate) fn effective(source: ContextSource) -> ContextSource {
    match source {
        ContextSource::Snapshot if blob().is_some() => ContextSource::Snapshot,
        _ => ContextSource::Built,
    }
}

/// Gives a fresh context (entered) its helpers: from the snapshot's data when the isolate
/// was made from the blob, else installed now.
pub(crate) fn add_helpers(
    scope: &mut v8::PinScope<'_, '_>,
    source: ContextSource,
    surface: code_mode_protocol::Surface,
) {
    if source == ContextSource::Built || !define_snapshot_helpers(scope, surface) {
        super::helpers::install_base(scope, surface);
    }
}
