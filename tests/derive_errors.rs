//! Bad input to `#[derive(Pooled)]` is a compile error with a span and a message that
//! says what to do: each case in `tests/ui/` with the compiler's output beside it.
//! `TRYBUILD=overwrite cargo test --test derive_errors` rewrites the `.stderr` files
//! after a deliberate change of message.

#[test]
fn bad_input_is_a_compile_error_that_says_what_to_do() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
