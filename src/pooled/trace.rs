//! [`Trace`]: visiting every handle a value holds.

use std::any::TypeId;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;

use crate::handle::{Handle, short_type_name};

/// A handle of any type: the target type and the handle's [`to_bits`](Handle::to_bits).
///
/// Two `AnyHandle`s are equal when they name the same slot and generation of the same
/// type.
///
/// ```
/// use neurostore::{AnyHandle, Handle};
///
/// struct Neuron;
/// let h = Handle::<Neuron>::from_bits(5 | 3 << 32);
/// let any = AnyHandle::new(h);
/// assert_eq!(any.type_name(), "Neuron");
/// assert_eq!(any.to_bits(), h.to_bits());
/// assert_eq!(any.typed::<Neuron>(), Some(h));
/// assert_eq!(any.typed::<u32>(), None);
/// assert_eq!(format!("{any:?}"), "Neuron#5v3");
/// ```
#[derive(Clone, Copy)]
pub struct AnyHandle {
    type_id: TypeId,
    bits: u64,
    name: fn() -> &'static str,
}

impl AnyHandle {
    /// The type-erased form of `handle`.
    #[inline]
    pub fn new<T: 'static>(handle: Handle<T>) -> AnyHandle {
        AnyHandle {
            type_id: TypeId::of::<T>(),
            bits: handle.to_bits(),
            name: short_type_name::<T>,
        }
    }

    /// The target type's short name (`Neuron`, `Synapse`).
    pub fn type_name(&self) -> &'static str {
        (self.name)()
    }

    /// The target type's `TypeId`.
    #[inline]
    pub fn type_id(&self) -> TypeId {
        self.type_id
    }

    /// The handle's stable 64-bit form ([`Handle::to_bits`]).
    #[inline]
    pub fn to_bits(&self) -> u64 {
        self.bits
    }

    /// The handle again, if it is a handle of `T`.
    #[inline]
    pub fn typed<T: 'static>(&self) -> Option<Handle<T>> {
        (self.type_id == TypeId::of::<T>()).then(|| Handle::from_bits(self.bits))
    }

    /// True if this is a handle of `T`.
    #[inline]
    pub fn is<T: 'static>(&self) -> bool {
        self.type_id == TypeId::of::<T>()
    }
}

impl PartialEq for AnyHandle {
    fn eq(&self, other: &Self) -> bool {
        self.type_id == other.type_id && self.bits == other.bits
    }
}

impl Eq for AnyHandle {}

impl Hash for AnyHandle {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.type_id.hash(state);
        self.bits.hash(state);
    }
}

impl fmt::Debug for AnyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}#{}v{}",
            self.type_name(),
            self.bits as u32,
            (self.bits >> 32) as u32
        )
    }
}

/// Receives the handles a [`Trace`] implementation visits.
///
/// ```
/// use neurostore::{AnyHandle, Handle, Trace, Tracer};
///
/// struct Neuron;
/// let pair = (Handle::<Neuron>::from_bits(1 | 1 << 32), 2.5f32);
/// let mut seen = Vec::new();
/// let mut sink = |h: AnyHandle| seen.push(h);
/// pair.trace(&mut Tracer::new(&mut sink));
/// assert_eq!(seen.len(), 1);
/// ```
pub struct Tracer<'a> {
    sink: Sink<'a>,
}

/// Where a [`Tracer`] sends the handles it is shown.
enum Sink<'a> {
    /// A caller's closure ([`Tracer::new`]).
    Closure(&'a mut dyn FnMut(AnyHandle)),
    /// The collector's edge buffer: no call and no `AnyHandle` per handle.
    Edges(&'a mut EdgeBuffer),
}

impl fmt::Debug for Tracer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracer").finish_non_exhaustive()
    }
}

impl<'a> Tracer<'a> {
    /// A tracer that hands every visited handle to `sink`.
    pub fn new(sink: &'a mut dyn FnMut(AnyHandle)) -> Tracer<'a> {
        Tracer {
            sink: Sink::Closure(sink),
        }
    }

    /// A tracer that appends every visited handle to `edges`, as held by object
    /// `edges.holder`.
    pub(crate) fn edges(edges: &'a mut EdgeBuffer) -> Tracer<'a> {
        Tracer {
            sink: Sink::Edges(edges),
        }
    }

    /// Visits `handle`; the null handle is skipped (it names nothing).
    #[inline]
    pub fn handle<T: 'static>(&mut self, handle: Handle<T>) {
        if handle.is_null() {
            return;
        }
        match &mut self.sink {
            Sink::Closure(sink) => sink(AnyHandle::new(handle)),
            Sink::Edges(edges) => edges.push(handle),
        }
    }
}

/// The handles a batch of objects holds, as the collector reads them: the handles' bits
/// and their holders' positions side by side, and the runs of one target type.
#[derive(Debug, Default)]
pub(crate) struct EdgeBuffer {
    /// Each handle's [`to_bits`](Handle::to_bits).
    pub(crate) bits: Vec<u64>,
    /// Each handle's holder: its position in the batch being traced.
    pub(crate) holders: Vec<u32>,
    /// Where each run of handles of one type starts in `bits`, with one handle of the
    /// run (its type and name).
    pub(crate) runs: Vec<(usize, AnyHandle)>,
    /// The holder of the handles pushed next.
    pub(crate) holder: u32,
}

impl EdgeBuffer {
    pub(crate) fn clear(&mut self) {
        self.bits.clear();
        self.holders.clear();
        self.runs.clear();
    }

    #[inline]
    fn push<T: 'static>(&mut self, handle: Handle<T>) {
        if !self.runs.last().is_some_and(|r| r.1.is::<T>()) {
            self.runs.push((self.bits.len(), AnyHandle::new(handle)));
        }
        self.bits.push(handle.to_bits());
        self.holders.push(self.holder);
    }

    /// The runs as `(range in bits, a handle of the run's type)`.
    pub(crate) fn runs(&self) -> impl Iterator<Item = (std::ops::Range<usize>, AnyHandle)> + '_ {
        self.runs.iter().enumerate().map(|(i, &(start, h))| {
            let end = self.runs.get(i + 1).map_or(self.bits.len(), |r| r.0);
            (start..end, h)
        })
    }
}

impl AnyHandle {
    /// A handle of the same type with other bits.
    #[inline]
    pub(crate) fn with_bits(self, bits: u64) -> AnyHandle {
        AnyHandle { bits, ..self }
    }
}

/// Visits every [`Handle`] a value holds. `#[derive(Pooled)]` implements it by visiting
/// every field not marked `#[pooled(skip)]`; the crate implements it for handles, for
/// types that hold none (numbers, `bool`, `char`, `String`, ...) and for the standard
/// containers (`Option`, `Result`, arrays, slices, tuples, `Vec`, `VecDeque`, `Box`,
/// `Rc`, `Arc`, maps and sets), which visit what they contain.
///
/// The garbage collector follows exactly what `trace` visits: a handle left out is not
/// kept alive through this value.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `neurostore::Trace`",
    label = "the derive visits this field to find the handles it holds",
    note = "derive `neurostore::Pooled` on the field's type, or put #[pooled(skip)] on the field if it holds no handle"
)]
pub trait Trace {
    /// Whether a value of this type can hold a handle at all. `false` lets the collector
    /// skip a table of the type: its objects keep nothing else alive, so they need no
    /// visit. The default, `true`, is always correct.
    ///
    /// ```
    /// use neurostore::{Handle, Pooled, Trace};
    ///
    /// #[derive(Pooled)]
    /// struct Plain { rate: f32, count: u64 }
    /// #[derive(Pooled)]
    /// struct Linked { next: Option<Handle<Linked>> }
    ///
    /// assert!(!Plain::HOLDS_HANDLES);
    /// assert!(Linked::HOLDS_HANDLES);
    /// assert!(!<Vec<(u8, String)> as Trace>::HOLDS_HANDLES);
    /// ```
    const HOLDS_HANDLES: bool = true;

    /// Hands every handle this value holds to `tracer`.
    fn trace(&self, tracer: &mut Tracer<'_>);
}

/// The handles `value` holds, in the order [`Trace`] visits them: for debugging and tests.
///
/// ```
/// use neurostore::{Handle, trace_handles};
///
/// struct Neuron;
/// let a = Handle::<Neuron>::from_bits(1 | 1 << 32);
/// let b = Handle::<Neuron>::from_bits(2 | 1 << 32);
/// let held = vec![Some(a), None, Some(Handle::null()), Some(b)];
/// let seen: Vec<_> = trace_handles(&held).iter().map(|h| h.to_bits()).collect();
/// assert_eq!(seen, [a.to_bits(), b.to_bits()]);
/// ```
pub fn trace_handles<T: Trace + ?Sized>(value: &T) -> Vec<AnyHandle> {
    let mut out = Vec::new();
    let mut sink = |h: AnyHandle| out.push(h);
    value.trace(&mut Tracer::new(&mut sink));
    out
}

impl<T: 'static> Trace for Handle<T> {
    #[inline]
    fn trace(&self, tracer: &mut Tracer<'_>) {
        tracer.handle(*self);
    }
}

/// `Trace` for types that hold no handle.
macro_rules! trace_nothing {
    ($($t:ty),* $(,)?) => {
        $(
            impl Trace for $t {
                const HOLDS_HANDLES: bool = false;
                #[inline]
                fn trace(&self, _: &mut Tracer<'_>) {}
            }
        )*
    };
}

trace_nothing!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    bool,
    char,
    (),
    str,
    String,
    std::time::Duration,
    std::num::NonZeroU8,
    std::num::NonZeroU16,
    std::num::NonZeroU32,
    std::num::NonZeroU64,
    std::num::NonZeroUsize,
    std::num::NonZeroI32,
    std::num::NonZeroI64,
);

impl<T: ?Sized> Trace for std::marker::PhantomData<T> {
    const HOLDS_HANDLES: bool = false;
    #[inline]
    fn trace(&self, _: &mut Tracer<'_>) {}
}

impl<T: Trace> Trace for Option<T> {
    const HOLDS_HANDLES: bool = T::HOLDS_HANDLES;
    #[inline]
    fn trace(&self, tracer: &mut Tracer<'_>) {
        if let Some(v) = self {
            v.trace(tracer);
        }
    }
}

impl<T: Trace, E: Trace> Trace for Result<T, E> {
    const HOLDS_HANDLES: bool = T::HOLDS_HANDLES || E::HOLDS_HANDLES;
    fn trace(&self, tracer: &mut Tracer<'_>) {
        match self {
            Ok(v) => v.trace(tracer),
            Err(e) => e.trace(tracer),
        }
    }
}

impl<T: Trace, const N: usize> Trace for [T; N] {
    const HOLDS_HANDLES: bool = T::HOLDS_HANDLES;
    #[inline]
    fn trace(&self, tracer: &mut Tracer<'_>) {
        self.as_slice().trace(tracer);
    }
}

impl<T: Trace> Trace for [T] {
    const HOLDS_HANDLES: bool = T::HOLDS_HANDLES;
    #[inline]
    fn trace(&self, tracer: &mut Tracer<'_>) {
        for v in self {
            v.trace(tracer);
        }
    }
}

impl<T: Trace> Trace for Vec<T> {
    const HOLDS_HANDLES: bool = T::HOLDS_HANDLES;
    #[inline]
    fn trace(&self, tracer: &mut Tracer<'_>) {
        self.as_slice().trace(tracer);
    }
}

impl<T: Trace> Trace for VecDeque<T> {
    const HOLDS_HANDLES: bool = T::HOLDS_HANDLES;
    fn trace(&self, tracer: &mut Tracer<'_>) {
        self.iter().for_each(|v| v.trace(tracer));
    }
}

impl<T: Trace + ?Sized> Trace for Box<T> {
    const HOLDS_HANDLES: bool = T::HOLDS_HANDLES;
    #[inline]
    fn trace(&self, tracer: &mut Tracer<'_>) {
        (**self).trace(tracer);
    }
}

impl<T: Trace + ?Sized> Trace for Arc<T> {
    const HOLDS_HANDLES: bool = T::HOLDS_HANDLES;
    fn trace(&self, tracer: &mut Tracer<'_>) {
        (**self).trace(tracer);
    }
}

impl<T: Trace + ?Sized> Trace for Rc<T> {
    const HOLDS_HANDLES: bool = T::HOLDS_HANDLES;
    fn trace(&self, tracer: &mut Tracer<'_>) {
        (**self).trace(tracer);
    }
}

impl<K: Trace, V: Trace, S> Trace for HashMap<K, V, S> {
    const HOLDS_HANDLES: bool = K::HOLDS_HANDLES || V::HOLDS_HANDLES;
    fn trace(&self, tracer: &mut Tracer<'_>) {
        for (k, v) in self {
            k.trace(tracer);
            v.trace(tracer);
        }
    }
}

impl<K: Trace, V: Trace> Trace for BTreeMap<K, V> {
    const HOLDS_HANDLES: bool = K::HOLDS_HANDLES || V::HOLDS_HANDLES;
    fn trace(&self, tracer: &mut Tracer<'_>) {
        for (k, v) in self {
            k.trace(tracer);
            v.trace(tracer);
        }
    }
}

impl<T: Trace, S> Trace for HashSet<T, S> {
    const HOLDS_HANDLES: bool = T::HOLDS_HANDLES;
    fn trace(&self, tracer: &mut Tracer<'_>) {
        self.iter().for_each(|v| v.trace(tracer));
    }
}

impl<T: Trace> Trace for BTreeSet<T> {
    const HOLDS_HANDLES: bool = T::HOLDS_HANDLES;
    fn trace(&self, tracer: &mut Tracer<'_>) {
        self.iter().for_each(|v| v.trace(tracer));
    }
}

/// `Trace` for tuples: each element in order.
macro_rules! trace_tuple {
    ($($name:ident)+) => {
        impl<$($name: Trace),+> Trace for ($($name,)+) {
            const HOLDS_HANDLES: bool = false $(|| $name::HOLDS_HANDLES)+;
            #[inline]
            fn trace(&self, tracer: &mut Tracer<'_>) {
                #[allow(non_snake_case)]
                let ($($name,)+) = self;
                $($name.trace(tracer);)+
            }
        }
    };
}

trace_tuple!(A);
trace_tuple!(A B);
trace_tuple!(A B C);
trace_tuple!(A B C D);
trace_tuple!(A B C D E);
trace_tuple!(A B C D E F);
trace_tuple!(A B C D E F G);
trace_tuple!(A B C D E F G H);
