use neurostore::Pooled;

#[derive(Pooled)]
union Bits {
    word: u32,
    bytes: [u8; 4],
}

fn main() {}
