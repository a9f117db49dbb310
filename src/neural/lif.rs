//! Exact integration of the leaky integrate-and-fire neuron with exponential synaptic
//! currents (NEST's `iaf_psc_exp`, after Rotter & Diesmann 1999).
//!
//! Between spikes the state `(V - E_L, I_ex, I_in)` follows a linear system, so one step of
//! length `h` is a multiplication by constant propagators: `P22 = exp(-h/tau_m)`,
//! `P11 = exp(-h/tau_syn)`, the current-to-voltage terms `P21` and the constant-input term
//! `P20`. The propagators are computed in `f64` and the state is advanced in `f32`, in the
//! order NEST uses: voltage from the currents at the start of the step, then the currents
//! decay, then the spikes arriving in this step are added, then the threshold is checked.

use super::types::Neuron;

/// The constants of one step of length `h` for one set of neuron parameters. `repr(C)`
/// and Pod: the device step reads them as its `ns_props`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Propagators {
    pub(crate) p22: f32,
    pub(crate) p20: f32,
    pub(crate) p21_ex: f32,
    pub(crate) p21_in: f32,
    pub(crate) p11_ex: f32,
    pub(crate) p11_in: f32,
    pub(crate) refractory_steps: u32,
}

/// `V(h)` (relative to rest) after a step of `h` of a current `I(0) = 1` that decays with
/// `tau_syn`, into a membrane with `tau_m` and `c_m`, from `V(0) = 0`.
fn current_to_voltage(tau_syn: f64, tau_m: f64, c_m: f64, h: f64) -> f64 {
    if (tau_m - tau_syn).abs() <= 1e-9 * tau_m {
        // The limit tau_syn -> tau_m of the expression below.
        h / c_m * (-h / tau_m).exp()
    } else {
        // (exp(-h/tau_syn) - exp(-h/tau_m)) written with expm1 to keep the digits that the
        // difference of two numbers near 1 would lose.
        tau_m * tau_syn / (c_m * (tau_syn - tau_m))
            * ((-h / tau_syn).exp_m1() - (-h / tau_m).exp_m1())
    }
}

impl Propagators {
    /// The propagators of `neuron`'s parameters for steps of `h` milliseconds.
    pub(crate) fn new(neuron: &Neuron, h: f64) -> Self {
        let tau_m = f64::from(neuron.tau_m);
        let c_m = f64::from(neuron.c_m);
        let tau_ex = f64::from(neuron.tau_syn_ex);
        let tau_in = f64::from(neuron.tau_syn_in);
        Propagators {
            p22: (-h / tau_m).exp() as f32,
            p20: (-tau_m / c_m * (-h / tau_m).exp_m1()) as f32,
            p21_ex: current_to_voltage(tau_ex, tau_m, c_m, h) as f32,
            p21_in: current_to_voltage(tau_in, tau_m, c_m, h) as f32,
            p11_ex: (-h / tau_ex).exp() as f32,
            p11_in: (-h / tau_in).exp() as f32,
            refractory_steps: refractory_steps(neuron.t_ref, h),
        }
    }
}

/// NEST's refractory count: the refractory period in whole steps, rounded to nearest.
pub(crate) fn refractory_steps(t_ref: f32, h: f64) -> u32 {
    let steps = (f64::from(t_ref) / h).round();
    if steps > 0.0 {
        // Saturating: an absurd t_ref becomes "refractory for u32::MAX steps".
        steps.min(f64::from(u32::MAX)) as u32
    } else {
        // Zero, negative or NaN: no refractory period.
        0
    }
}

/// The parameters that the propagators depend on, as bits, to tell when they can be reused.
fn parameter_key(n: &Neuron) -> [u32; 5] {
    // In the order of the fields, so that the key is one load of 16 bytes and one of 4.
    [
        n.c_m.to_bits(),
        n.tau_m.to_bits(),
        n.tau_syn_ex.to_bits(),
        n.tau_syn_in.to_bits(),
        n.t_ref.to_bits(),
    ]
}

/// Propagators for steps of `h`, remembered for the last parameter set seen: neurons of one
/// population share parameters, so a worker walking a table computes them once per run of
/// equal parameters instead of once per neuron.
pub(crate) struct PropagatorCache {
    h: f64,
    key: [u32; 5],
    propagators: Option<Propagators>,
}

impl PropagatorCache {
    /// An empty cache for steps of `h`.
    pub(crate) fn new(h: f64) -> Self {
        PropagatorCache {
            h,
            key: [0; 5],
            propagators: None,
        }
    }

    /// The propagators of `neuron`. The common case (the same parameters as the last
    /// neuron) is a comparison and a borrow; a change recomputes them out of line.
    #[inline]
    pub(crate) fn get(&mut self, neuron: &Neuron) -> &Propagators {
        match &self.propagators {
            Some(_) if parameter_key(neuron) == self.key => {}
            _ => self.refill(neuron),
        }
        self.propagators.as_ref().expect("filled above")
    }

    /// Computes and keeps the propagators of `neuron`.
    #[cold]
    #[inline(never)]
    fn refill(&mut self, neuron: &Neuron) {
        self.key = parameter_key(neuron);
        self.propagators = Some(Propagators::new(neuron, self.h));
    }
}

/// Advances `neuron` by one step in which `input_ex` and `input_in` (pA) arrive, and
/// returns whether it fired. `step` is recorded as the spike's step.
#[inline]
pub(crate) fn advance(
    neuron: &mut Neuron,
    p: &Propagators,
    input_ex: f32,
    input_in: f32,
    step: u64,
) -> bool {
    if neuron.refractory_steps == 0 {
        let y = neuron.v_m - neuron.e_l;
        let y = y * p.p22
            + neuron.i_e * p.p20
            + neuron.i_syn_ex * p.p21_ex
            + neuron.i_syn_in * p.p21_in;
        neuron.v_m = y + neuron.e_l;
    } else {
        neuron.refractory_steps -= 1;
    }
    neuron.i_syn_ex = neuron.i_syn_ex * p.p11_ex + input_ex;
    neuron.i_syn_in = neuron.i_syn_in * p.p11_in + input_in;
    if neuron.v_m >= neuron.v_th {
        neuron.refractory_steps = p.refractory_steps;
        neuron.v_m = neuron.v_reset;
        neuron.last_spike_step = step;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neural::NeuronParams;

    #[test]
    fn current_to_voltage_is_continuous_at_equal_time_constants() {
        let h = 0.1;
        let at = current_to_voltage(10.0, 10.0, 250.0, h);
        let near = current_to_voltage(10.0 + 1e-6, 10.0, 250.0, h);
        assert!((at - near).abs() < 1e-9 * at.abs(), "{at} vs {near}");
        // Against a fine Euler integration of the same system.
        let (mut v, mut i) = (0.0f64, 1.0f64);
        let n = 100_000;
        let dt = h / f64::from(n);
        let (tau_m, tau_s, c) = (10.0, 0.5, 250.0);
        for _ in 0..n {
            let dv = -v / tau_m + i / c;
            let di = -i / tau_s;
            v += dv * dt;
            i += di * dt;
        }
        let exact = current_to_voltage(tau_s, tau_m, c, h);
        assert!((exact - v).abs() < 1e-5 * exact, "{exact} vs euler {v}");
    }

    #[test]
    fn constant_current_relaxes_to_i_times_r() {
        let params = NeuronParams {
            i_e: 100.0,
            v_th: 1000.0,
            ..NeuronParams::default()
        };
        let mut n = Neuron::new(&params);
        let p = Propagators::new(&n, 0.1);
        for step in 0..100_000 {
            assert!(!advance(&mut n, &p, 0.0, 0.0, step));
        }
        // R = tau_m / C_m = 0.04 GOhm: 100 pA lift the membrane by 4 mV.
        assert!((n.v_m - (-66.0)).abs() < 1e-3, "{}", n.v_m);
    }

    #[test]
    fn refractory_count_rounds_to_nearest_step() {
        assert_eq!(refractory_steps(2.0, 0.1), 20);
        assert_eq!(refractory_steps(0.0, 0.1), 0);
        assert_eq!(refractory_steps(0.26, 0.1), 3);
        assert_eq!(refractory_steps(f32::MAX, 1e-300), u32::MAX);
    }

    #[test]
    fn cache_recomputes_when_parameters_change() {
        let a = Neuron::new(&NeuronParams::default());
        let b = Neuron::new(&NeuronParams {
            tau_m: 20.0,
            ..NeuronParams::default()
        });
        let mut cache = PropagatorCache::new(0.1);
        assert_eq!(*cache.get(&a), Propagators::new(&a, 0.1));
        assert_eq!(*cache.get(&b), Propagators::new(&b, 0.1));
        let pa = *cache.get(&a);
        assert_ne!(pa, *cache.get(&b));
        assert_eq!(pa, *cache.get(&a), "back to the first parameters");
    }
}
