use neurostore::Pooled;

#[derive(Pooled)]
#[pooled(align = 64)]
struct Cell {
    v: [f32; 3],
}

fn main() {}
