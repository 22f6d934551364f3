//! Every callback V8 calls into the runtime outside a JS function call: module resolution
//! (static imports), dynamic `import()`, the near-heap-limit callback, and the counting
//! `ArrayBuffer` allocator.
//!
//! Gathered here so the unsafe surface that V8 drives lives in one place.

use super::values::{QUOTED_MAX_BYTES, bounded_string, throw_string, v8_str};
use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    let specifier = bounded_string(scope, specifier, QUOTED_MAX_BYTES);
    throw_string(
        scope,
        &code_mode_protocol::texts::unsupported_import(&specifier),
    );
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

/// Heap granted, in bytes, when V8 calls the near-heap-limit callback only because an
/// `ArrayBuffer` allocation was refused (its last-resort collection does that).
const BUFFER_REFUSAL_HEADROOM_BYTES: usize = 1024 * 1024;

/// Data for [`near_heap_limit`]: lives on the cell thread's stack frame, which outlives the
/// isolate that points at it.
pub(crate) struct HeapGuard {
    /// The guarded isolate, set right after it is created.
    isolate: std::sync::OnceLock<v8::IsolateHandle>,
    hit: AtomicBool,
    /// Set by the counting allocator when it refuses a buffer.
    buffer_refused: Arc<AtomicBool>,
}

impl HeapGuard {
    pub(crate) fn new() -> Self {
        Self {
            isolate: std::sync::OnceLock::new(),
            hit: AtomicBool::new(false),
            buffer_refused: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The flag the cell's counting allocator raises when it refuses a buffer.
    pub(crate) fn buffer_refusals(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.buffer_refused)
    }

    /// Records the isolate to terminate when its heap runs out.
    pub(crate) fn guard(&self, isolate: v8::IsolateHandle) {
        let _ = self.isolate.set(isolate);
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
///
/// # Safety
/// `data` must be the pointer [`HeapGuard::as_callback_data`] gave for a guard that outlives
/// the isolate this callback is registered with; V8 guarantees it by calling only while the
/// isolate lives.
pub(crate) unsafe extern "C" fn near_heap_limit(
    data: *mut c_void,
    current_heap_limit: usize,
    initial_heap_limit: usize,
) -> usize {
    // SAFETY: `data` is the `HeapGuard` registered with this isolate; the cell thread keeps
    // it alive until after the isolate is disposed, and it is only read through `&`.
    let guard = unsafe { &*data.cast::<HeapGuard>() };
    // A refused `ArrayBuffer` already threw a catchable `RangeError`; V8's last-resort
    // collection for it lands here without the heap being full. Excuse it, boundedly.
    if guard.buffer_refused.swap(false, Ordering::SeqCst)
        && current_heap_limit < initial_heap_limit.saturating_mul(2)
    {
        return current_heap_limit.saturating_add(BUFFER_REFUSAL_HEADROOM_BYTES);
    }
    guard.hit.store(true, Ordering::SeqCst);
    if let Some(isolate) = guard.isolate.get() {
        isolate.terminate_execution();
    }
    current_heap_limit.saturating_add(HEAP_UNWIND_HEADROOM_BYTES)
}

/// An `ArrayBuffer` allocator that refuses to hand out more than `limit` bytes in total, so
/// a cell's buffers count against a budget like its heap. A refused allocation makes V8
/// throw a catchable `RangeError`.
pub(crate) struct CountingAllocator {
    used: AtomicU64,
    limit: u64,
    /// Raised on each refusal, for the heap guard.
    refused: Arc<AtomicBool>,
}

impl CountingAllocator {
    /// A V8 allocator with a budget of `limit` bytes; refusals raise `refused`.
    pub(crate) fn new_v8(limit: u64, refused: Arc<AtomicBool>) -> v8::UniqueRef<v8::Allocator> {
        let handle = Arc::into_raw(Arc::new(CountingAllocator {
            used: AtomicU64::new(0),
            limit,
            refused,
        }));
        // SAFETY: `handle` points to a live `CountingAllocator` whose ownership passes to
        // V8 until it calls `drop_allocator` (which takes it back exactly once); the vtable
        // is `'static`.
        unsafe { v8::new_rust_allocator(handle, &COUNTING_ALLOCATOR_VTABLE) }
    }

    fn reserve(&self, len: usize) -> bool {
        let len = len as u64;
        let reserved = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(len).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if !reserved {
            self.refused.store(true, Ordering::SeqCst);
        }
        reserved
    }

    fn release(&self, len: usize) {
        self.used.fetch_sub(len as u64, Ordering::SeqCst);
    }
}

static COUNTING_ALLOCATOR_VTABLE: v8::RustAllocatorVtable<CountingAllocator> =
    v8::RustAllocatorVtable {
        allocate: allocate_zeroed,
        allocate_uninitialized,
        free: free_buffer,
        drop: drop_allocator,
    };

/// V8's `Allocate`: zeroed memory within the budget, or null.
///
/// # Safety
/// Called by V8 only, with the allocator it was given; the returned pointer must be freed
/// with [`free_buffer`] and the same length.
unsafe extern "C" fn allocate_zeroed(allocator: &CountingAllocator, len: usize) -> *mut c_void {
    if !allocator.reserve(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: plain C allocation; at least one byte so that a zero-length buffer still
    // gets a unique non-null pointer.
    let data = unsafe { libc::calloc(len.max(1), 1) };
    if data.is_null() {
        allocator.release(len);
    }
    data
}

/// V8's `AllocateUninitialized`: memory within the budget, or null.
///
/// # Safety
/// As for [`allocate_zeroed`].
unsafe extern "C" fn allocate_uninitialized(
    allocator: &CountingAllocator,
    len: usize,
) -> *mut c_void {
    if !allocator.reserve(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: plain C allocation, as above.
    let data = unsafe { libc::malloc(len.max(1)) };
    if data.is_null() {
        allocator.release(len);
    }
    data
}

/// V8's `Free`.
///
/// # Safety
/// `data` must come from [`allocate_zeroed`] or [`allocate_uninitialized`] of the same
/// allocator with the same `len`, and be freed once.
unsafe extern "C" fn free_buffer(allocator: &CountingAllocator, data: *mut c_void, len: usize) {
    // SAFETY: V8 frees only pointers this allocator returned, once, with their length.
    unsafe { libc::free(data) };
    allocator.release(len);
}

/// V8's destructor of the allocator.
///
/// # Safety
/// `allocator` must be the pointer [`CountingAllocator::new_v8`] handed to V8, dropped
/// once, after every buffer was freed.
unsafe extern "C" fn drop_allocator(allocator: *const CountingAllocator) {
    // SAFETY: `allocator` came from `Arc::into_raw` in `new_v8`; V8 calls this once.
    drop(unsafe { Arc::from_raw(allocator) });
}
