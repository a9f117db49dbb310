use neurostore::Pooled;

#[derive(Pooled)]
struct Label {
    text: &'static str,
}

#[derive(Pooled)]
enum Link {
    To(Option<&'static Label>),
}

fn main() {}
