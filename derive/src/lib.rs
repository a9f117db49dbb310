//! `#[derive(Pooled)]` for [neurostore](https://docs.rs/neurostore): layer 8 of its
//! design. Use it through the main crate (`use neurostore::Pooled;`); this crate only
//! generates code.
//!
//! The derive implements two traits of the main crate:
//!
//! - `neurostore::Pooled`: a stable `TYPE_NAME` (the type's name, or
//!   `#[pooled(name = "...")]`), a `SCHEMA` fingerprint (FNV-1a of the name, shape, field
//!   names and field type tokens, mixed with size and alignment: the same on every build,
//!   compiler and machine that lays the type out the same), and `HINTS` from the attributes
//!   `retention`, `align`, `kind`, `lifetime` and `pod`;
//! - `neurostore::Trace`: visits every field (and every variant's fields) except those
//!   marked `#[pooled(skip)]`, so every `Handle<_>` the value holds reaches the tracer.
//!
//! Bad input (a union, a borrowed or raw-pointer field, a lifetime parameter, an unknown
//! attribute key or value) is a compile error pointing at the offending tokens.

mod attrs;
mod expand;
mod schema;

use proc_macro::TokenStream;

/// Derives `neurostore::Pooled` and `neurostore::Trace`. See the main crate's `Pooled`
/// trait for the attributes.
#[proc_macro_derive(Pooled, attributes(pooled))]
pub fn derive_pooled(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::pooled(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
