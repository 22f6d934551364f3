//! Every callback V8 calls into the runtime outside a JS function call: module resolution
//! (static imports), dynamic `import()`, and the near-heap-limit callback.
//!
//! Gathered here so the unsafe surface that V8 drives lives in one place.

use super::CellControl;
use super::values::{throw_string, v8_str};
use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Extra heap granted, in bytes, each time the limit is reached, so that V8 can unwind the
/// terminated script instead of aborting the process on out-of-memory.
const HEAP_UNWIND_HEADROOM_BYTES: usize = 32 * 1024 * 1024;

/// Static imports are refused: instantiation fails with the contract's string.
pub(crate) fn resolve_module<'s>(
    context: v8::Local<'s, v8::Context>,
    specifier: v8::Local<'s, v8::String>,
    _import_attributes: v8::Local<'s, v8::FixedArray>,
    _referrer: v8::Local<'s, v8::Module>,
) -> Option<v8::Local<'s, v8::Module>> {
    // SAFETY: V8 calls this during `instantiate_module` on the isolate's own thread with a
    // live context, which is what a callback scope requires.
    v8::callback_scope!(unsafe scope, context);
    let specifier = specifier.to_rust_string_lossy(scope);
    throw_string(scope, &format!("Unsupported import in exec: {specifier}"));
    None
}

/// Dynamic `import()` returns a promise rejected with the contract's string.
pub(crate) fn dynamic_import<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    _host_defined_options: v8::Local<'s, v8::Data>,
    _resource_name: v8::Local<'s, v8::Value>,
    _specifier: v8::Local<'s, v8::String>,
    _import_attributes: v8::Local<'s, v8::FixedArray>,
) -> Option<v8::Local<'s, v8::Promise>> {
    let resolver = v8::PromiseResolver::new(scope)?;
    let reason = v8_str(scope, "unsupported import in exec");
    resolver.reject(scope, reason.into());
    Some(resolver.get_promise(scope))
}

/// Data for [`near_heap_limit`]: lives on the cell thread's stack frame, which outlives the
/// isolate that points at it.
pub(crate) struct HeapGuard {
    control: Arc<CellControl>,
    hit: AtomicBool,
}

impl HeapGuard {
    pub(crate) fn new(control: Arc<CellControl>) -> Self {
        Self {
            control,
            hit: AtomicBool::new(false),
        }
    }

    /// Whether the cell reached its heap limit.
    pub(crate) fn hit(&self) -> bool {
        self.hit.load(Ordering::SeqCst)
    }

    /// The pointer V8 passes back to [`near_heap_limit`].
    pub(crate) fn as_callback_data(&self) -> *mut c_void {
        std::ptr::from_ref(self).cast_mut().cast()
    }
}

/// The heap is about to reach its limit: terminate the cell's JS and grant headroom so V8
/// can unwind instead of aborting the process.
pub(crate) unsafe extern "C" fn near_heap_limit(
    data: *mut c_void,
    current_heap_limit: usize,
    _initial_heap_limit: usize,
) -> usize {
    // SAFETY: `data` is the `HeapGuard` registered with this isolate; the cell thread keeps
    // it alive until after the isolate is disposed, and it is only read through `&`.
    let guard = unsafe { &*data.cast::<HeapGuard>() };
    guard.hit.store(true, Ordering::SeqCst);
    if let Some(isolate) = guard.control.isolate.get() {
        isolate.terminate_execution();
    }
    current_heap_limit.saturating_add(HEAP_UNWIND_HEADROOM_BYTES)
}
