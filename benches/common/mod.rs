//! Helpers the benchmarks share: a deterministic generator and criterion's estimates.
// Each bench includes this module and uses only part of it.
#![allow(dead_code)]

/// xorshift64*: deterministic and allocation-free.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0), with negligible modulo bias for the sizes used here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `keys` in a random order (Fisher-Yates with `seed`).
pub fn shuffled<K: Copy>(keys: &[K], seed: u64) -> Vec<K> {
    let mut v = keys.to_vec();
    let mut rng = Rng(seed | 1);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

/// Criterion's point estimate (ns) for one benchmark of this run: the slope for linearly
/// sampled benchmarks, else the mean.
pub fn estimate(group: &str, id: &str) -> Option<f64> {
    let path = format!("target/criterion/{group}/{id}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| v["mean"]["point_estimate"].as_f64())
}

/// The 32-byte object of the table and device benches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Obj {
    pub v: f64,
    pub i: f64,
    pub w: f64,
    pub id: u64,
}
