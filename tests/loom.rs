//! Loom checks of the pool's lock-free pieces, over every interleaving:
//! `RUSTFLAGS="--cfg loom" cargo test --release --test loom`.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use neurostore::lockfree::{InitGate, get_or_install};

#[test]
fn init_gate_initialises_once_and_publishes_the_writes() {
    loom::model(|| {
        let gate = Arc::new(InitGate::new());
        let value = Arc::new(UnsafeCell::new(0u32));
        let inits = Arc::new(AtomicUsize::new(0));
        let run = {
            let (gate, value, inits) = (gate.clone(), value.clone(), inits.clone());
            move || {
                if !gate.is_ready() {
                    if gate.try_begin() {
                        // SAFETY: only the thread that won the gate writes, before `finish`.
                        value.with_mut(|v| unsafe { *v = 42 });
                        inits.fetch_add(1, Ordering::Relaxed);
                        gate.finish();
                    } else {
                        gate.wait_ready();
                    }
                }
                // SAFETY: the gate is ready, so the write happened-before this read.
                assert_eq!(value.with(|v| unsafe { *v }), 42);
            }
        };
        let other = loom::thread::spawn(run.clone());
        run();
        other.join().unwrap();
        assert_eq!(inits.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn get_or_install_publishes_exactly_one_object() {
    loom::model(|| {
        let slot = Arc::new(AtomicPtr::<u64>::new(std::ptr::null_mut()));
        let made = Arc::new(AtomicUsize::new(0));
        let discarded = Arc::new(AtomicUsize::new(0));
        let race = {
            let (slot, made, discarded) = (slot.clone(), made.clone(), discarded.clone());
            move |tag: u64| {
                let p = get_or_install(
                    &slot,
                    || {
                        made.fetch_add(1, Ordering::Relaxed);
                        Some(Box::into_raw(Box::new(tag)))
                    },
                    |lost| {
                        // SAFETY: the losing object was made by `Box::into_raw` above and
                        // never published.
                        drop(unsafe { Box::from_raw(lost) });
                        discarded.fetch_add(1, Ordering::Relaxed);
                    },
                )
                .unwrap();
                // SAFETY: the published object is never freed while the slot is in use.
                let v = unsafe { *p };
                assert!(v == 1 || v == 2);
                p as usize
            }
        };
        let r2 = race.clone();
        let other = loom::thread::spawn(move || r2(2));
        let mine = race(1);
        let theirs = other.join().unwrap();
        assert_eq!(mine, theirs, "both threads see the one installed object");
        let installs = made.load(Ordering::Relaxed) - discarded.load(Ordering::Relaxed);
        assert_eq!(installs, 1, "every object made but one was discarded");
        // SAFETY: the winner was made by `Box::into_raw` and is freed once, here.
        drop(unsafe { Box::from_raw(slot.load(Ordering::Relaxed)) });
    });
}
