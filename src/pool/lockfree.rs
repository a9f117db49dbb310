//! The pool's lock-free pieces, written over loom's atomics under `--cfg loom` so that loom
//! checks every interleaving (`RUSTFLAGS="--cfg loom" cargo test --release --test loom`).
//!
//! - [`InitGate`]: a one-time initialisation protocol (UNINIT → INITIALISING → READY)
//!   that the global allocator uses, since it cannot use `OnceLock` (which may allocate).
//! - [`get_or_install`]: publish a lazily made object in an `AtomicPtr` slot exactly once;
//!   a thread that loses the race discards its own copy. The page map makes its leaves so.
//!
//! Neither has an ABA problem: a gate's state only moves forward, and a slot only goes
//! from null to one pointer that is never replaced or freed while the slot is in use.

#[cfg(loom)]
use loom::sync::atomic::{AtomicPtr, AtomicU8};
#[cfg(not(loom))]
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering;

const UNINIT: u8 = 0;
const INITIALISING: u8 = 1;
const READY: u8 = 2;

/// A one-time initialisation protocol: one thread wins [`try_begin`](Self::try_begin),
/// initialises, and calls [`finish`](Self::finish); every write it made before `finish` is
/// visible to a thread that then sees [`is_ready`](Self::is_ready).
#[derive(Debug)]
pub struct InitGate {
    state: AtomicU8,
}

impl Default for InitGate {
    fn default() -> Self {
        Self::new()
    }
}

impl InitGate {
    /// A gate nobody has passed.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        InitGate {
            state: AtomicU8::new(UNINIT),
        }
    }

    /// A gate nobody has passed.
    #[cfg(loom)]
    pub fn new() -> Self {
        InitGate {
            state: AtomicU8::new(UNINIT),
        }
    }

    /// True once initialisation has finished (acquire: its writes are visible).
    #[inline]
    pub fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    /// True for exactly one caller: the one that must initialise.
    pub fn try_begin(&self) -> bool {
        self.state
            .compare_exchange(UNINIT, INITIALISING, Ordering::Acquire, Ordering::Acquire)
            .is_ok()
    }

    /// Publishes the initialisation (release). Only the caller that won `try_begin` may call it.
    pub fn finish(&self) {
        self.state.store(READY, Ordering::Release);
    }

    /// Waits, yielding, until the winner has finished.
    pub fn wait_ready(&self) {
        while !self.is_ready() {
            #[cfg(loom)]
            loom::thread::yield_now();
            #[cfg(not(loom))]
            std::thread::yield_now();
        }
    }
}

/// An atomic pointer that [`get_or_install`] can publish into: the standard library's (the
/// page map's, which stays on std atomics even under loom) and, under loom, loom's.
pub trait PointerSlot<T> {
    /// The pointer in the slot (acquire).
    fn load_acquire(&self) -> *mut T;
    /// Puts `fresh` in the slot if it is null (acquire-release): `Ok(fresh)`, or
    /// `Err(winner)` with the pointer another thread installed first.
    fn install(&self, fresh: *mut T) -> Result<*mut T, *mut T>;
}

macro_rules! pointer_slot {
    ($atomic:ty) => {
        impl<T> PointerSlot<T> for $atomic {
            #[inline]
            fn load_acquire(&self) -> *mut T {
                self.load(Ordering::Acquire)
            }

            fn install(&self, fresh: *mut T) -> Result<*mut T, *mut T> {
                self.compare_exchange(
                    std::ptr::null_mut(),
                    fresh,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
            }
        }
    };
}

pointer_slot!(std::sync::atomic::AtomicPtr<T>);
#[cfg(loom)]
pointer_slot!(AtomicPtr<T>);

/// The object in `slot`, made with `make` and installed if the slot is null. When another
/// thread installs first, our object goes to `discard` and theirs is returned. `None` when
/// `make` fails (the slot stays as it was).
pub fn get_or_install<T>(
    slot: &impl PointerSlot<T>,
    make: impl FnOnce() -> Option<*mut T>,
    discard: impl FnOnce(*mut T),
) -> Option<*mut T> {
    let current = slot.load_acquire();
    if !current.is_null() {
        return Some(current);
    }
    let fresh = make()?;
    match slot.install(fresh) {
        Ok(_) => Some(fresh),
        Err(winner) => {
            discard(fresh);
            Some(winner)
        }
    }
}
