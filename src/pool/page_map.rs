//! The page map: from any address to the region that owns it, in O(1).
//!
//! A two-level radix table over 64 KiB granules of a 48-bit address space, shared by
//! every pool in the process. Each mapped region registers each of its granules with a
//! pointer to its [`RegionHeader`], and removes them before it is unmapped. Reading is
//! lock-free (two dependent loads); leaves are created on demand with a compare-and-swap
//! and never freed, so a reader can never see a dangling leaf.
//!
//! Invariant: an entry is non-null exactly while the granule belongs to a live region of
//! some pool, and then it points to that region's header, which outlives the entry.

use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, Ordering};

use super::lockfree::get_or_install;
use super::os::{self, GRANULE};

const GRANULE_SHIFT: u32 = GRANULE.trailing_zeros();
const LEAF_BITS: u32 = 16;
const ROOT_BITS: u32 = 48 - GRANULE_SHIFT - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;
const ROOT_LEN: usize = 1 << ROOT_BITS;

/// Which tier a region belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RegionKind {
    /// A chunk of one small size class.
    SmallChunk = 1,
    /// A medium-tier region of boundary-tagged blocks.
    MediumRegion = 2,
    /// A large-tier buddy arena.
    LargeArena = 3,
    /// One allocation above the buddy's largest block, mapped on its own.
    Huge = 4,
}

/// The common first field of every region's metadata.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct RegionHeader {
    /// The owning pool's id.
    pub pool_id: u64,
    /// Which tier, and so which metadata type this header starts.
    pub kind: RegionKind,
    /// Start of the region.
    pub base: usize,
    /// Length of the region in bytes.
    pub len: usize,
}

type Leaf = [AtomicPtr<RegionHeader>; LEAF_LEN];

static ROOT: [AtomicPtr<Leaf>; ROOT_LEN] = [const { AtomicPtr::new(ptr::null_mut()) }; ROOT_LEN];

fn split(addr: usize) -> Option<(usize, usize)> {
    let key = addr >> GRANULE_SHIFT;
    let root = key >> LEAF_BITS;
    (root < ROOT_LEN).then_some((root, key & (LEAF_LEN - 1)))
}

fn leaf(root: usize, create: bool) -> Option<&'static Leaf> {
    let bytes = std::mem::size_of::<Leaf>();
    let p = if create {
        get_or_install(
            &ROOT[root],
            || os::map(bytes, GRANULE, false).map(|p| p.as_ptr().cast::<Leaf>()),
            // SAFETY: the losing leaf was mapped by us with this length and never published.
            |lost| unsafe { os::unmap(NonNull::new_unchecked(lost.cast()), bytes, GRANULE) },
        )?
    } else {
        NonNull::new(ROOT[root].load(Ordering::Acquire))?.as_ptr()
    };
    // SAFETY: leaves are zero-filled mappings (a valid array of null AtomicPtr) that are
    // never unmapped once published, so a 'static shared reference is sound.
    Some(unsafe { &*p })
}

/// Points every granule of `[base, base + len)` at `header`. Returns false (and registers
/// nothing) if the range lies outside the mapped address space or a leaf could not be made.
pub(crate) fn register(base: usize, len: usize, header: *const RegionHeader) -> bool {
    debug_assert!(base.is_multiple_of(GRANULE) && len.is_multiple_of(GRANULE));
    let Some(last) = base.checked_add(len - 1) else {
        return false;
    };
    if split(last).is_none() {
        return false;
    }
    // Create all leaves first so that a failure leaves nothing half-registered.
    let mut addr = base;
    while addr <= last {
        let (r, _) = split(addr).expect("checked above");
        if leaf(r, true).is_none() {
            return false;
        }
        addr = ((addr >> (GRANULE_SHIFT + LEAF_BITS)) + 1) << (GRANULE_SHIFT + LEAF_BITS);
    }
    set_range(base, len, header.cast_mut());
    true
}

/// Clears every granule of a region registered with [`register`].
pub(crate) fn unregister(base: usize, len: usize) {
    set_range(base, len, ptr::null_mut());
}

fn set_range(base: usize, len: usize, value: *mut RegionHeader) {
    let mut addr = base;
    while addr < base + len {
        let (r, i) = split(addr).expect("registered ranges lie in the address space");
        let l = leaf(r, false).expect("registered ranges have leaves");
        l[i].store(value, Ordering::Release);
        addr += GRANULE;
    }
}

/// The header of the region holding `addr`, if any pool owns it. The pointer stays
/// valid while the region is live (see the module invariant).
#[inline]
pub(crate) fn lookup(addr: usize) -> Option<NonNull<RegionHeader>> {
    let (r, i) = split(addr)?;
    NonNull::new(leaf(r, false)?[i].load(Ordering::Acquire))
}

/// Reads the header of the region holding `addr`, if any pool owns it.
#[inline]
pub(crate) fn lookup_ref(addr: usize) -> Option<&'static RegionHeader> {
    // SAFETY: a non-null entry points to the header of a live region (module invariant);
    // the header's fields never change while the region is registered, and callers only
    // read them while the owning pool is alive, which outlives its regions.
    lookup(addr).map(|p| unsafe { p.as_ref() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_ranges_resolve_and_unregistered_do_not() {
        let len = 3 * GRANULE;
        let base = os::map(len, GRANULE, false).unwrap();
        let header = Box::new(RegionHeader {
            pool_id: 77,
            kind: RegionKind::Huge,
            base: base.as_ptr() as usize,
            len,
        });
        let b = base.as_ptr() as usize;
        assert!(lookup(b).is_none());
        assert!(register(b, len, &*header));
        for off in [0, 1, GRANULE, len - 1] {
            assert_eq!(lookup_ref(b + off).map(|h| h.pool_id), Some(77));
        }
        assert!(lookup_ref(b + len).is_none_or(|h| h.pool_id != 77));
        unregister(b, len);
        assert!(lookup(b).is_none());
        // SAFETY: the region mapped above, unregistered and unused.
        unsafe { os::unmap(base, len, GRANULE) };
    }

    #[test]
    fn addresses_outside_48_bits_never_resolve() {
        assert!(lookup(usize::MAX).is_none());
        assert!(lookup(1 << 50).is_none());
        assert!(!register(1 << 50, GRANULE, ptr::null()));
    }
}
