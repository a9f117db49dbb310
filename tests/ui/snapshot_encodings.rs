use neurostore::Pooled;

// Two encodings at once.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Pooled)]
#[repr(C)]
#[pooled(pod, serde)]
struct Both(u32);

// `serde` on a type that does not implement serde's traits.
#[derive(Pooled)]
#[pooled(serde)]
struct NoSerde(u32);

fn main() {}
