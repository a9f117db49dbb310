//! The built-in Pod types of the neural layer and their handle aliases.
//!
//! All four are `#[repr(C)]`, padding-free and [`bytemuck::Pod`], so tables of them can be
//! mirrored to a GPU and snapshotted as raw bytes. They derive [`Pooled`] like any user
//! type: `#[pooled(pod, kind = ...)]`, and `Neuron` is aligned to a 64-byte cache line. Units follow NEST: millivolts,
//! milliseconds, picoamperes and picofarads.

use bytemuck::{Pod, Zeroable};

use crate::table::Handle;
use crate::{Error, Pooled};

/// The handle of a [`Neuron`].
pub type NeuronId = Handle<Neuron>;
/// The handle of a [`Synapse`].
pub type SynapseId = Handle<Synapse>;
/// The handle of a [`Weight`].
pub type WeightId = Handle<Weight>;
/// The handle of a [`Signal`].
pub type SignalId = Handle<Signal>;

/// `last_spike_step` of a neuron that has not fired yet.
pub const NEVER_SPIKED: u64 = u64::MAX;

/// A leaky integrate-and-fire neuron with exponentially decaying synaptic currents (NEST's
/// `iaf_psc_exp`): its state and its parameters, 64 bytes, one cache line.
///
/// The membrane potential obeys `C_m dV/dt = -(V - E_L) C_m / tau_m + I_ex + I_in + I_e`,
/// each synaptic current decays as `dI/dt = -I / tau_syn`, and an incoming spike of weight
/// `w` adds `w` to `I_ex` (when `w >= 0`) or `I_in` (when `w < 0`). When `V` reaches
/// `v_th` the neuron fires, `V` is set to `v_reset` and held there for `t_ref`
/// milliseconds. [`NeuralGraph::step`](super::NeuralGraph::step) integrates this exactly.
///
/// ```
/// use neurostore::neural::{Neuron, NeuronParams};
///
/// let n = Neuron::new(&NeuronParams { i_e: 400.0, ..NeuronParams::default() });
/// assert_eq!(n.v_m, -70.0);
/// assert!(!n.is_refractory());
/// assert_eq!(std::mem::size_of::<Neuron>(), 64);
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable, Pooled)]
#[pooled(pod, kind = "neuron", lifetime = "long", align = 64)]
pub struct Neuron {
    /// Membrane potential (mV).
    pub v_m: f32,
    /// Excitatory synaptic current (pA).
    pub i_syn_ex: f32,
    /// Inhibitory synaptic current (pA, zero or negative).
    pub i_syn_in: f32,
    /// Constant external input current (pA).
    pub i_e: f32,
    /// Spike threshold (mV).
    pub v_th: f32,
    /// Reset potential after a spike (mV).
    pub v_reset: f32,
    /// Resting potential (mV).
    pub e_l: f32,
    /// Membrane capacitance (pF).
    pub c_m: f32,
    /// Membrane time constant (ms).
    pub tau_m: f32,
    /// Time constant of the excitatory synaptic current (ms).
    pub tau_syn_ex: f32,
    /// Time constant of the inhibitory synaptic current (ms).
    pub tau_syn_in: f32,
    /// Refractory period (ms).
    pub t_ref: f32,
    /// Steps of the refractory period still to wait; zero when the neuron integrates.
    pub refractory_steps: u32,
    /// The population (or any grouping) the neuron belongs to.
    pub population: u32,
    /// The step in which the neuron last fired, or [`NEVER_SPIKED`].
    pub last_spike_step: u64,
}

impl Neuron {
    /// A neuron at rest-state `params.v_init` with no synaptic current.
    pub fn new(params: &NeuronParams) -> Self {
        Neuron {
            v_m: params.v_init,
            i_syn_ex: 0.0,
            i_syn_in: 0.0,
            i_e: params.i_e,
            v_th: params.v_th,
            v_reset: params.v_reset,
            e_l: params.e_l,
            c_m: params.c_m,
            tau_m: params.tau_m,
            tau_syn_ex: params.tau_syn_ex,
            tau_syn_in: params.tau_syn_in,
            t_ref: params.t_ref,
            refractory_steps: 0,
            population: params.population,
            last_spike_step: NEVER_SPIKED,
        }
    }

    /// True while the membrane potential is clamped after a spike.
    pub fn is_refractory(&self) -> bool {
        self.refractory_steps > 0
    }

    /// The step of the last spike, if the neuron has fired.
    pub fn last_spike(&self) -> Option<u64> {
        (self.last_spike_step != NEVER_SPIKED).then_some(self.last_spike_step)
    }
}

/// The parameters a [`Neuron`] is made from. `Default` gives NEST's `iaf_psc_exp` defaults.
///
/// ```
/// use neurostore::neural::NeuronParams;
///
/// let p = NeuronParams { tau_m: 0.0, ..NeuronParams::default() };
/// assert!(p.validate().is_err());
/// assert!(NeuronParams::default().validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NeuronParams {
    /// Membrane capacitance (pF), > 0.
    pub c_m: f32,
    /// Membrane time constant (ms), > 0.
    pub tau_m: f32,
    /// Excitatory synaptic time constant (ms), > 0.
    pub tau_syn_ex: f32,
    /// Inhibitory synaptic time constant (ms), > 0.
    pub tau_syn_in: f32,
    /// Refractory period (ms), >= 0.
    pub t_ref: f32,
    /// Resting potential (mV).
    pub e_l: f32,
    /// Reset potential (mV), below `v_th`.
    pub v_reset: f32,
    /// Threshold (mV).
    pub v_th: f32,
    /// Constant input current (pA).
    pub i_e: f32,
    /// Initial membrane potential (mV).
    pub v_init: f32,
    /// Population id stored in the neuron.
    pub population: u32,
}

impl Default for NeuronParams {
    fn default() -> Self {
        NeuronParams {
            c_m: 250.0,
            tau_m: 10.0,
            tau_syn_ex: 2.0,
            tau_syn_in: 2.0,
            t_ref: 2.0,
            e_l: -70.0,
            v_reset: -70.0,
            v_th: -55.0,
            i_e: 0.0,
            v_init: -70.0,
            population: 0,
        }
    }
}

impl NeuronParams {
    /// Checks that the parameters describe a neuron the exact integration can step:
    /// every value finite, capacitance and time constants positive, a non-negative
    /// refractory period and a reset below the threshold. The error names the field.
    pub fn validate(&self) -> Result<(), Error> {
        let fields = [
            ("c_m", self.c_m),
            ("tau_m", self.tau_m),
            ("tau_syn_ex", self.tau_syn_ex),
            ("tau_syn_in", self.tau_syn_in),
            ("t_ref", self.t_ref),
            ("e_l", self.e_l),
            ("v_reset", self.v_reset),
            ("v_th", self.v_th),
            ("i_e", self.i_e),
            ("v_init", self.v_init),
        ];
        for (name, value) in fields {
            if !value.is_finite() {
                return Err(Error::invalid_argument(
                    name,
                    format!("{value} is not a finite number"),
                ));
            }
        }
        for (name, value) in [
            ("c_m", self.c_m),
            ("tau_m", self.tau_m),
            ("tau_syn_ex", self.tau_syn_ex),
            ("tau_syn_in", self.tau_syn_in),
        ] {
            if value <= 0.0 {
                return Err(Error::invalid_argument(
                    name,
                    format!("{value} must be greater than zero"),
                ));
            }
        }
        if self.t_ref < 0.0 {
            return Err(Error::invalid_argument(
                "t_ref",
                format!("{} must not be negative", self.t_ref),
            ));
        }
        if self.v_reset >= self.v_th {
            return Err(Error::invalid_argument(
                "v_reset",
                format!(
                    "{} must lie below the threshold v_th = {}",
                    self.v_reset, self.v_th
                ),
            ));
        }
        Ok(())
    }
}

/// A synapse as it is stored: a directed, weighted, delayed connection between two
/// neurons, 16 bytes.
///
/// `weight` is in pA (positive excites, negative inhibits); `delay` is in ms and is rounded
/// to whole steps (at least one) when spikes are propagated. The neurons are kept as slot
/// indices, which a [`NeuralGraph`](super::NeuralGraph) guarantees name live neurons (it
/// removes a neuron's synapses with it): the graph shows them as handles
/// ([`SynapseView`], [`NeuralGraph::synapse`](super::NeuralGraph::synapse)).
///
/// ```
/// use neurostore::neural::{NeuronId, Synapse};
///
/// let pre = NeuronId::from_bits(1 << 32 | 7);
/// let post = NeuronId::from_bits(3 << 32 | 9);
/// let s = Synapse::new(pre, post, 87.8, 1.5);
/// assert_eq!((s.pre_index(), s.post_index(), s.weight, s.delay), (7, 9, 87.8, 1.5));
/// assert!(s.is_excitatory());
/// assert_eq!(std::mem::size_of::<Synapse>(), 16);
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable, Pooled)]
#[pooled(pod, kind = "synapse", lifetime = "medium")]
pub struct Synapse {
    pre: u32,
    post: u32,
    /// Weight (pA): the jump of the postsynaptic current per spike.
    pub weight: f32,
    /// Transmission delay (ms).
    pub delay: f32,
}

impl Synapse {
    /// A synapse from `pre` to `post` (their slot indices are kept).
    pub fn new(pre: NeuronId, post: NeuronId, weight: f32, delay: f32) -> Self {
        Synapse {
            pre: pre.index(),
            post: post.index(),
            weight,
            delay,
        }
    }

    /// The slot index of the presynaptic (sending) neuron.
    pub fn pre_index(&self) -> u32 {
        self.pre
    }

    /// The slot index of the postsynaptic (receiving) neuron.
    pub fn post_index(&self) -> u32 {
        self.post
    }

    /// True when a spike through this synapse adds to the excitatory current.
    pub fn is_excitatory(&self) -> bool {
        self.weight >= 0.0
    }
}

/// A synapse as a [`NeuralGraph`](super::NeuralGraph) shows it: its neurons as handles.
///
/// ```
/// use neurostore::neural::{NeuralGraph, NeuronParams};
///
/// let mut graph = NeuralGraph::new();
/// let ns = graph.add_neurons(2, &NeuronParams::default())?;
/// let s = graph.connect(ns[0], ns[1], 87.8, 1.5)?;
/// let view = graph.synapse(s).unwrap();
/// assert_eq!((view.pre, view.post, view.weight, view.delay), (ns[0], ns[1], 87.8, 1.5));
/// # Ok::<(), neurostore::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SynapseView {
    /// The presynaptic (sending) neuron.
    pub pre: NeuronId,
    /// The postsynaptic (receiving) neuron.
    pub post: NeuronId,
    /// Weight (pA).
    pub weight: f32,
    /// Transmission delay (ms).
    pub delay: f32,
}

/// A learnable weight kept apart from its synapse: the value, and room for an eligibility
/// trace and a gradient, for plasticity rules and rate-based training.
///
/// ```
/// use neurostore::neural::Weight;
///
/// let w = Weight::new(0.5);
/// assert_eq!((w.value, w.trace, w.gradient), (0.5, 0.0, 0.0));
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable, Pooled)]
#[pooled(pod, kind = "weight", lifetime = "medium")]
pub struct Weight {
    /// The weight itself.
    pub value: f32,
    /// An eligibility trace (for example of an STDP rule).
    pub trace: f32,
    /// An accumulated gradient.
    pub gradient: f32,
    /// Free for the user: a learning rate, flags, a second trace.
    pub aux: f32,
}

impl Weight {
    /// A weight of `value` with no trace and no gradient.
    pub fn new(value: f32) -> Self {
        Weight {
            value,
            ..Weight::default()
        }
    }
}

/// A spike in flight: from `source` to `target`, carrying `value`, to be delivered in step
/// `delivery_step`. For event-driven code and device-side spike queues.
///
/// ```
/// use neurostore::neural::{NeuronId, Signal};
///
/// let s = Signal::new(NeuronId::null(), NeuronId::null(), 87.8, 15);
/// assert_eq!(s.delivery_step, 15);
/// assert_eq!(std::mem::size_of::<Signal>(), 32);
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable, Pooled)]
#[pooled(pod, kind = "signal", lifetime = "short")]
pub struct Signal {
    /// The step in which the signal reaches its target.
    pub delivery_step: u64,
    /// The neuron that sent it.
    pub source: NeuronId,
    /// The neuron that receives it.
    pub target: NeuronId,
    /// What it carries (pA for a spike through a synapse).
    pub value: f32,
    /// Free for the user: a port, a receptor type, flags.
    pub tag: u32,
}

impl Signal {
    /// A signal with tag 0.
    pub fn new(source: NeuronId, target: NeuronId, value: f32, delivery_step: u64) -> Self {
        Signal {
            delivery_step,
            source,
            target,
            value,
            tag: 0,
        }
    }
}
