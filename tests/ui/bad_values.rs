use neurostore::Pooled;

#[derive(Pooled)]
#[pooled(retention = "weak")]
struct A(f32);

#[derive(Pooled)]
#[pooled(kind = "dendrite")]
struct B(f32);

#[derive(Pooled)]
#[pooled(lifetime = "forever")]
struct C(f32);

#[derive(Pooled)]
#[pooled(align = 48)]
struct D(f32);

#[derive(Pooled)]
#[pooled(name = "")]
struct E(f32);

#[derive(Pooled)]
#[pooled(align = "64")]
struct F(f32);

#[derive(Pooled)]
#[pooled(kind = "neuron", kind = "synapse")]
struct G(f32);

#[derive(Pooled)]
#[pooled(pod = true)]
struct H(f32);

fn main() {}
