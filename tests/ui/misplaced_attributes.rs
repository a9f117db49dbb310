use neurostore::Pooled;

#[derive(Pooled)]
#[pooled(skip)]
struct A {
    v: f32,
}

#[derive(Pooled)]
struct B {
    #[pooled(retention = "traced")]
    v: f32,
}

#[derive(Pooled)]
enum C {
    #[pooled(skip)]
    V(f32),
}

fn main() {}
