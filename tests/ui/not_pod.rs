use neurostore::Pooled;

#[derive(Pooled)]
#[pooled(pod)]
struct Cell {
    name: String,
}

fn main() {}
