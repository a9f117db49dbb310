use neurostore::Pooled;

#[derive(Pooled)]
struct Node {
    value: f32,
    next: *const Node,
    others: Vec<*mut Node>,
}

fn main() {}
