use neurostore::Pooled;

#[derive(Pooled)]
struct View<'a> {
    values: std::marker::PhantomData<&'a [f32]>,
}

fn main() {}
