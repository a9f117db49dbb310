//! Regions of memory straight from the operating system.
//!
//! Every byte the pool hands out lies in a region mapped here: anonymous, zero-filled,
//! private mappings whose start is aligned to at least [`GRANULE`] (64 KiB), so the
//! [page map](super::page_map) can name the owner of any address. On Unix the regions
//! come from `mmap` (with `MADV_HUGEPAGE` when asked) and go back with `munmap`;
//! elsewhere they come from the system allocator.

use std::ptr::NonNull;

use super::numa::NumaBinding;

/// Alignment and size granule of every region, and the page map's unit.
pub(crate) const GRANULE: usize = 1 << 16;

/// Rounds `n` up to a multiple of `to` (a power of two); `None` on overflow.
pub(crate) fn round_up(n: usize, to: usize) -> Option<usize> {
    debug_assert!(to.is_power_of_two());
    Some(n.checked_add(to - 1)? & !(to - 1))
}

/// Maps `len` bytes (a multiple of [`GRANULE`]) aligned to `align` (a power of two, at least
/// [`GRANULE`]). The memory reads as zero. `None` when the OS refuses.
#[cfg(unix)]
pub(crate) fn map(len: usize, align: usize, huge_pages: bool) -> Option<NonNull<u8>> {
    debug_assert!(len.is_multiple_of(GRANULE) && len > 0);
    debug_assert!(align.is_power_of_two() && align >= GRANULE);
    // Over-map so that an aligned start exists inside, then trim both ends.
    let span = len.checked_add(align)?;
    // SAFETY: an anonymous private mapping with a null hint has no preconditions; the
    // result is checked against MAP_FAILED before use.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let raw_addr = raw as usize;
    let start = round_up(raw_addr, align)?;
    let head = start - raw_addr;
    let tail = span - head - len;
    if head > 0 {
        // SAFETY: [raw, raw + head) lies inside the mapping made above and nothing uses it.
        unsafe { libc::munmap(raw, head) };
    }
    if tail > 0 {
        // SAFETY: [start + len, start + len + tail) is the unused end of the same mapping.
        unsafe { libc::munmap((start + len) as *mut libc::c_void, tail) };
    }
    #[cfg(target_os = "linux")]
    if huge_pages {
        // SAFETY: [start, start + len) is a mapping we own; madvise only changes paging policy.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = huge_pages;
    NonNull::new(start as *mut u8)
}

/// [`map`], then binds the region's pages to the NUMA placement `numa`; `None` (and
/// nothing mapped) when either step is refused.
pub(crate) fn map_placed(
    len: usize,
    align: usize,
    huge_pages: bool,
    numa: NumaBinding,
) -> Option<NonNull<u8>> {
    let base = map(len, align, huge_pages)?;
    // SAFETY: `[base, base + len)` was just mapped, page aligned, and nothing uses it.
    if unsafe { numa.apply(base.as_ptr(), len) } {
        return Some(base);
    }
    // SAFETY: the whole region mapped above, unused.
    unsafe { unmap(base, len, align) };
    None
}

/// Asks for transparent huge pages over `[ptr, ptr + len)` (a hint; only Linux acts on
/// it, and only over whole 2 MiB pages inside the range).
///
/// # Safety
/// The range lies in a mapping from [`map`].
pub(crate) unsafe fn advise_huge(ptr: NonNull<u8>, len: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: per the contract the range is mapped and ours; madvise only changes paging
    // policy.
    unsafe {
        libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE)
    };
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

/// Returns a region to the OS.
///
/// # Safety
/// `ptr` and `len` must be exactly a region returned by [`map`] that is not used anymore.
#[cfg(unix)]
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize, _align: usize) {
    // SAFETY: the caller passes a whole region from `map` that nothing references.
    unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
}

/// Gives the pages of `[ptr, ptr + len)` back to the OS while keeping the mapping; their
/// contents become undefined (old bytes or zeros) and the OS may reclaim them at will.
///
/// # Safety
/// The range lies in a region from [`map`] and nothing uses its contents any more.
#[cfg(unix)]
pub(crate) unsafe fn decommit(ptr: NonNull<u8>, len: usize) {
    #[cfg(target_os = "linux")]
    let advice = libc::MADV_FREE;
    #[cfg(not(target_os = "linux"))]
    let advice = libc::MADV_DONTNEED;
    // SAFETY: per the contract the range is ours and unused; madvise keeps the mapping.
    unsafe { libc::madvise(ptr.as_ptr().cast(), len, advice) };
}

/// Decommitting is a no-op without `madvise` (non-Unix fallback).
///
/// # Safety
/// As the Unix version.
#[cfg(not(unix))]
pub(crate) unsafe fn decommit(_ptr: NonNull<u8>, _len: usize) {}

/// Maps `len` bytes aligned to `align` from the system allocator (non-Unix fallback).
#[cfg(not(unix))]
pub(crate) fn map(len: usize, align: usize, _huge_pages: bool) -> Option<NonNull<u8>> {
    use std::alloc::{GlobalAlloc, Layout, System};
    let layout = Layout::from_size_align(len, align).ok()?;
    // SAFETY: the layout has a non-zero size.
    NonNull::new(unsafe { System.alloc_zeroed(layout) })
}

/// Returns a region to the system allocator (non-Unix fallback).
///
/// # Safety
/// `ptr`, `len` and `align` must be exactly a region returned by [`map`] that is not used anymore.
#[cfg(not(unix))]
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize, align: usize) {
    use std::alloc::{GlobalAlloc, Layout, System};
    // SAFETY: `map` allocated this block with exactly this layout.
    unsafe { System.dealloc(ptr.as_ptr(), Layout::from_size_align_unchecked(len, align)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_regions_are_aligned_zeroed_and_writable() {
        for &(len, align) in &[
            (GRANULE, GRANULE),
            (3 * GRANULE, 1 << 20),
            (1 << 22, 1 << 22),
        ] {
            let p = map(len, align, false).expect("map");
            assert_eq!(p.as_ptr() as usize % align, 0);
            // SAFETY: the region is `len` bytes long and ours alone.
            let bytes = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), len) };
            assert!(bytes.iter().step_by(4096).all(|&b| b == 0));
            bytes[len - 1] = 7;
            bytes[0] = 9;
            // SAFETY: exactly the region mapped above, no longer used.
            unsafe { unmap(p, len, align) };
        }
    }

    #[test]
    fn round_up_handles_overflow() {
        assert_eq!(round_up(1, 16), Some(16));
        assert_eq!(round_up(32, 16), Some(32));
        assert_eq!(round_up(usize::MAX, 16), None);
    }
}
