use neurostore::Pooled;

#[derive(Pooled)]
#[pooled(retain = "traced")]
struct Cell {
    v: f32,
}

fn main() {}
