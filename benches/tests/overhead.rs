//! What the cache holds per object and per recorded change beyond the objects' JSON, counted
//! by a global allocator: 10,000 simulator pods loaded, then 10,000 modifications applied. The
//! figures are printed (`cargo test -p kubehub-benches --release --test overhead --
//! --nocapture`) and must stay within a quarter of the ones `kubehub-cache` documents.

#![allow(unsafe_code)] // a counting global allocator
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use kubehub_benches::{pod_objects, pods};
use kubehub_cache::{ChangeKind, TypeCache, OVERHEAD_PER_CHANGE, OVERHEAD_PER_OBJECT};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[test]
fn overhead_per_object_and_per_change() {
    const N: usize = 10_000;
    let jsons = pods(N);
    assert_eq!(jsons.len(), N);
    let json_bytes: usize = jsons.iter().map(|j| j.len()).sum();
    // Modified copies, with their JSON allocated before counting starts.
    let modified: Vec<bytes::Bytes> = jsons
        .iter()
        .map(|j| bytes::Bytes::copy_from_slice(j))
        .collect();
    let cache = TypeCache::new(N);

    let before = live();
    cache.replace(pod_objects(&jsons), 1).unwrap(); // copies each JSON, then the records
    let loaded = live();
    let per_object = ((loaded - before) as f64 - json_bytes as f64) / N as f64;

    // One modification per object: the new JSON, its record, the history entry; the old
    // state stays referenced by the history (as `prev`) until it leaves the window.
    let mut next = pod_objects(&modified);
    for (i, o) in next.iter_mut().enumerate() {
        o.rv = 2 + i as u64;
    }
    for o in next {
        cache.apply(ChangeKind::Modified, o).unwrap();
    }
    let applied = live();
    let per_change = ((applied - loaded) as f64 - json_bytes as f64) / N as f64;
    drop((jsons, modified));

    let stats = cache.stats();
    println!(
        "{N} pods, {:.0} B of JSON each: {per_object:.0} B per object beyond its JSON; \
         {per_change:.0} B per modification beyond its new JSON",
        stats.bytes as f64 / N as f64,
    );
    assert_eq!(stats.objects, N);
    assert_eq!(stats.history, N);
    let near = |measured: f64, documented: usize| {
        (measured - documented as f64).abs() <= documented as f64 / 4.0
    };
    assert!(
        near(per_object, OVERHEAD_PER_OBJECT),
        "measured {per_object:.0} B per object, the crate documents {OVERHEAD_PER_OBJECT}"
    );
    assert!(
        near(per_change, OVERHEAD_PER_CHANGE),
        "measured {per_change:.0} B per change, the crate documents {OVERHEAD_PER_CHANGE}"
    );
}
