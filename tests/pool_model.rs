//! Model test: random allocate / deallocate / reallocate sequences over random layouts,
//! checked against a plain list of live blocks after every step: no two live blocks
//! overlap, each is aligned and holds what was written over its whole length, and the
//! pool's statistics equal the model's. A reset ends every block of the model at once.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ptr::NonNull;

use neurostore::{AllocFlags, Error, HierarchicalPool, PoolConfig};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align: usize,
    },
    /// `allocate_with` these flag bits (huge pages only where the large tier serves).
    AllocWith {
        size: usize,
        align: usize,
        flags: u32,
    },
    Free(usize),
    Realloc(usize, usize),
    FlushCache,
    Reset,
}

fn size_strategy() -> impl Strategy<Value = usize> {
    // Log-uniform over 0 B .. 8 MiB: every tier, both sides of every boundary.
    (0u32..=23, any::<u32>()).prop_map(|(bits, r)| {
        if bits == 0 {
            0
        } else {
            (1usize << (bits - 1)) + (r as usize % (1usize << (bits - 1)))
        }
    })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (size_strategy(), 0u32..=13).prop_map(|(size, a)| Op::Alloc { size, align: 1 << a }),
        2 => (size_strategy(), 0u32..=13, 0u32..8).prop_map(|(size, a, flags)| Op::AllocWith { size, align: 1 << a, flags }),
        4 => any::<usize>().prop_map(Op::Free),
        2 => (any::<usize>(), size_strategy()).prop_map(|(i, s)| Op::Realloc(i, s)),
        1 => Just(Op::FlushCache),
        1 => Just(Op::Reset),
    ]
}

fn config(which: u8) -> PoolConfig {
    let mut c = match which {
        0 => PoolConfig::default(),
        1 => PoolConfig::debug(),
        2 => {
            let mut c = PoolConfig::default();
            c.small.thread_cache_size = 0;
            c
        }
        _ => {
            let mut c = PoolConfig::default();
            c.small.thread_cache_size = 3;
            // The shallowest medium caches: every class flushes and refills often.
            c.medium.thread_cache_bytes = 1;
            c.small.blocks_per_chunk = 8;
            c.medium.region_size = 256 << 10;
            c.medium.segregated_fit = false;
            c
        }
    };
    c.retain_empty = (which % 2) as usize;
    c.large.max_size = 4 << 20;
    c
}

struct Block {
    ptr: NonNull<[u8]>,
    layout: Layout,
    tag: u8,
}

impl Block {
    fn start(&self) -> usize {
        self.ptr.cast::<u8>().as_ptr() as usize
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: the block is live in the model, `ptr.len()` bytes long.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>().as_ptr(), self.ptr.len()) }
    }
    fn fill(&self) {
        // SAFETY: as above; we own the block.
        unsafe { std::ptr::write_bytes(self.ptr.cast::<u8>().as_ptr(), self.tag, self.ptr.len()) }
    }
}

struct Model {
    blocks: Vec<Block>,
    spans: BTreeMap<usize, usize>,
    next_tag: u8,
}

impl Model {
    fn add(&mut self, ptr: NonNull<[u8]>, layout: Layout) -> Result<(), TestCaseError> {
        prop_assert!(ptr.len() >= layout.size(), "block shorter than its layout");
        let start = ptr.cast::<u8>().as_ptr() as usize;
        prop_assert_eq!(start % layout.align(), 0, "misaligned for {:?}", layout);
        if !ptr.is_empty() {
            let end = start + ptr.len();
            if let Some((&s, &e)) = self.spans.range(..end).next_back() {
                prop_assert!(
                    e <= start || s >= end,
                    "[{start:#x},{end:#x}) overlaps [{s:#x},{e:#x})"
                );
            }
            self.spans.insert(start, end);
        }
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        let b = Block {
            ptr,
            layout,
            tag: self.next_tag,
        };
        b.fill();
        self.blocks.push(b);
        Ok(())
    }

    fn take(&mut self, i: usize) -> Result<Block, TestCaseError> {
        let b = self.blocks.swap_remove(i);
        prop_assert!(
            b.bytes().iter().all(|&x| x == b.tag),
            "block contents changed while live"
        );
        if !b.ptr.is_empty() {
            self.spans.remove(&b.start());
        }
        Ok(b)
    }

    fn check(&self, pool: &HierarchicalPool) -> Result<(), TestCaseError> {
        for b in &self.blocks {
            let bytes = b.bytes();
            if let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) {
                prop_assert!(first == b.tag && last == b.tag, "live block corrupted");
            }
        }
        let st = pool.stats();
        let live = self.blocks.iter().filter(|b| b.layout.size() > 0).count() as u64;
        prop_assert_eq!(st.live_allocations, live);
        prop_assert_eq!(
            st.in_use_bytes,
            self.blocks.iter().map(|b| b.ptr.len()).sum::<usize>()
        );
        prop_assert_eq!(
            st.small.in_use_bytes + st.medium.in_use_bytes + st.large.in_use_bytes,
            st.in_use_bytes
        );
        prop_assert!(st.reserved_bytes >= st.in_use_bytes);
        prop_assert_eq!(st.invalid_frees, 0);
        if let Err(e) = pool.verify() {
            return Err(TestCaseError::fail(format!("pool invariant broken: {e}")));
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_match_the_model(which in 0u8..4, ops in prop::collection::vec(op_strategy(), 1..160)) {
        let mut pool = HierarchicalPool::new(config(which)).unwrap();
        let mut m = Model { blocks: Vec::new(), spans: BTreeMap::new(), next_tag: 0 };
        for op in ops {
            match op {
                Op::Alloc { size, align } => {
                    let layout = Layout::from_size_align(size, align).unwrap();
                    let ptr = pool.allocate(layout).unwrap();
                    m.add(ptr, layout)?;
                }
                Op::AllocWith { size, align, flags } => {
                    let layout = Layout::from_size_align(size, align).unwrap();
                    let flags = AllocFlags::from_bits(flags).unwrap();
                    match pool.allocate_with(layout, flags) {
                        Ok(ptr) => {
                            if flags.contains(AllocFlags::ZEROED) {
                                // SAFETY: the block was just allocated, `ptr.len()` bytes.
                                let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>().as_ptr(), ptr.len()) };
                                prop_assert!(bytes.iter().all(|&x| x == 0), "a zeroed block is not zero");
                            }
                            m.add(ptr, layout)?;
                        }
                        Err(Error::InvalidArgument { name: "flags", .. }) => {
                            prop_assert!(flags.contains(AllocFlags::HUGE_PAGES), "refused without HUGE_PAGES");
                        }
                        Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                    }
                }
                Op::Free(i) if !m.blocks.is_empty() => {
                    let b = m.take(i % m.blocks.len())?;
                    // SAFETY: the block is live, allocated with this layout, freed once.
                    unsafe { pool.try_deallocate(b.ptr.cast(), b.layout) }.unwrap();
                }
                Op::Realloc(i, new_size) if !m.blocks.is_empty() => {
                    let b = m.take(i % m.blocks.len())?;
                    // SAFETY: the block is live with this layout; on success only the new
                    // pointer is used.
                    let fresh = unsafe { pool.reallocate(b.ptr.cast(), b.layout, new_size) }.unwrap();
                    let kept = b.layout.size().min(new_size);
                    // SAFETY: the new block holds at least `new_size` bytes.
                    let prefix = unsafe { std::slice::from_raw_parts(fresh.cast::<u8>().as_ptr(), kept) };
                    prop_assert!(prefix.iter().all(|&x| x == b.tag), "reallocate lost contents");
                    m.add(fresh, Layout::from_size_align(new_size, b.layout.align()).unwrap())?;
                }
                Op::FlushCache => pool.flush_thread_cache(),
                Op::Reset => {
                    for b in &m.blocks {
                        prop_assert!(b.bytes().iter().all(|&x| x == b.tag), "block changed while live");
                    }
                    let live = m.blocks.iter().filter(|b| b.layout.size() > 0);
                    let (count, bytes) = live.fold((0, 0), |(c, n), b| (c + 1, n + b.ptr.len()));
                    let ended = pool.reset();
                    prop_assert_eq!((ended.count, ended.bytes), (count, bytes));
                    m.blocks.clear();
                    m.spans.clear();
                    let st = pool.stats();
                    prop_assert_eq!((st.allocations, st.deallocations, st.peak_in_use_bytes), (0, 0, 0));
                }
                _ => {}
            }
            m.check(&pool)?;
        }
        for i in (0..m.blocks.len()).rev() {
            let b = m.take(i)?;
            // SAFETY: as above.
            unsafe { pool.try_deallocate(b.ptr.cast(), b.layout) }.unwrap();
        }
        m.check(&pool)?;
        pool.flush_thread_cache();
        let st = pool.stats();
        prop_assert_eq!(st.in_use_bytes, 0);
        prop_assert_eq!(st.allocations, st.deallocations);
    }
}
