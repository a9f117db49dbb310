use neurostore::Pooled;

struct Opaque;

#[derive(Pooled)]
struct Cell {
    v: f32,
    extra: Opaque,
}

fn main() {}
