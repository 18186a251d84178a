//! The recording path must not touch the heap: a counting global
//! allocator watches `VersionStats::record` over many calls.

use backstop_core::analysis::{Outcome, VersionStats};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn recording_a_request_never_allocates() {
    let stats = VersionStats::new(1000, 10, 0);
    let outcomes = [
        Outcome::Success,
        Outcome::ServerError,
        Outcome::ClientError,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::Cancelled,
    ];
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..100_000u64 {
        stats.record(outcomes[(i % 6) as usize], i * 37 % 5_000_000, i % 4096);
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "allocations on the recording path");
    assert_eq!(stats.window(1).counts.requests, 100_000);
}
