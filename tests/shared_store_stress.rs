//! Load and faults: writers and readers on one `SharedStore` at once, for a bounded time,
//! in a binary whose global allocator is the pool (`NeuroAlloc`): the tables' chunks come
//! from a store pool, everything else (handle lists, strings, rayon) from the global one.
//! At the end every writer's objects are there and equal to what it wrote, every removed
//! handle is stale, counts agree, and both pools pass `verify`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use neurostore::{Handle, NeuroAlloc, SharedStore};

#[global_allocator]
static ALLOC: NeuroAlloc = NeuroAlloc::new();

/// An object whose fields check each other, so that a torn or stray write shows.
#[derive(Clone, Debug, PartialEq)]
struct Item {
    writer: u64,
    seq: u64,
    check: u64,
    label: String,
}

impl Item {
    fn new(writer: u64, seq: u64) -> Self {
        Item {
            writer,
            seq,
            check: checksum(writer, seq),
            label: format!("{writer}:{seq}"),
        }
    }

    fn is_whole(&self) -> bool {
        self.check == checksum(self.writer, self.seq)
            && self.label == format!("{}:{}", self.writer, self.seq)
    }
}

fn checksum(writer: u64, seq: u64) -> u64 {
    (writer << 40 ^ seq).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

const WRITERS: u64 = 3;
const READERS: usize = 2;

#[test]
fn writers_and_readers_share_a_store_and_every_invariant_holds() {
    let store = Arc::new(SharedStore::new());
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut live: Vec<(Handle<Item>, Item)> = Vec::new();
                let mut gone: Vec<Handle<Item>> = Vec::new();
                let mut rng = 0x2545_f491_4f6c_dd1du64 ^ (w + 1);
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    match rng % 4 {
                        0 | 1 => {
                            seq += 1;
                            let item = Item::new(w, seq);
                            live.push((store.insert(item.clone()), item));
                        }
                        2 if !live.is_empty() => {
                            let (h, item) = live.swap_remove((rng >> 8) as usize % live.len());
                            assert_eq!(store.remove(h), Some(item));
                            gone.push(h);
                        }
                        _ if !live.is_empty() => {
                            seq += 1;
                            let k = (rng >> 8) as usize % live.len();
                            let fresh = Item::new(w, seq);
                            let h = live[k].0;
                            store
                                .with_mut(h, |item| *item = fresh.clone())
                                .expect("a live handle of this writer");
                            live[k].1 = fresh;
                        }
                        _ => {}
                    }
                }
                (live, gone)
            })
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (store, stop, reads) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&reads));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(table) = store.table::<Item>() else {
                        continue;
                    };
                    let table = table.read();
                    for (h, item) in table.iter() {
                        assert!(item.is_whole(), "{h:?}: {item:?}");
                        assert_eq!(table.get(h), Some(item));
                    }
                    reads.fetch_add(table.len() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("a reader found no torn object");
    }
    let mut total = 0;
    for w in writers {
        let (live, gone) = w.join().expect("a writer's own checks hold");
        total += live.len();
        for (h, item) in &live {
            assert_eq!(store.with(*h, Item::clone).as_ref(), Some(item));
        }
        for h in &gone {
            assert_eq!(store.with(*h, |_| ()), None, "removed handles stay stale");
        }
    }
    let table = store.table::<Item>().expect("the writers made it");
    assert_eq!(table.read().len(), total);
    assert!(reads.load(Ordering::Relaxed) > 0, "the readers read");
    assert_eq!(
        store.table::<Item>().unwrap().read().pool().verify(),
        Ok(())
    );
    assert_eq!(ALLOC.pool().verify(), Ok(()));
}
