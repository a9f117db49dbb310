//! The token half of a schema fingerprint: a canonical text of the type's name, shape,
//! field names and field type tokens, hashed with 64-bit FNV-1a.
//!
//! The text depends only on the tokens as written, never on spacing, the compiler or the
//! machine, so the same source gives the same hash everywhere. The main crate mixes in
//! the type's size and alignment (`neurostore::pooled::schema_fingerprint`), which only
//! the compiler knows.

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{Data, DeriveInput, Fields};

/// FNV-1a, 64 bits: offset basis and prime.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hashes `bytes` with FNV-1a 64.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The canonical text of the type: `name`, then its shape and every field in order.
///
/// `struct Synapse { pre: Handle<Neuron>, weight: f32 }` named "Synapse" gives
/// `neurostore-schema-v1|Synapse|struct{pre:Handle<Neuron>;weight:f32;}`.
pub(crate) fn canonical_text(input: &DeriveInput, name: &str) -> String {
    let mut out = format!("neurostore-schema-v1|{name}|");
    match &input.data {
        Data::Struct(s) => {
            out.push_str("struct");
            fields_text(&s.fields, &mut out);
        }
        Data::Enum(e) => {
            out.push_str("enum{");
            for v in &e.variants {
                out.push_str(&v.ident.to_string());
                fields_text(&v.fields, &mut out);
                if let Some((_, discriminant)) = &v.discriminant {
                    out.push('=');
                    tokens_text(discriminant.to_token_stream(), &mut out);
                }
                out.push(',');
            }
            out.push('}');
        }
        Data::Union(_) => out.push_str("union"),
    }
    out
}

fn fields_text(fields: &Fields, out: &mut String) {
    let (open, close) = match fields {
        Fields::Named(_) => ('{', '}'),
        Fields::Unnamed(_) => ('(', ')'),
        Fields::Unit => return,
    };
    out.push(open);
    for (i, f) in fields.iter().enumerate() {
        match &f.ident {
            Some(ident) => out.push_str(&ident.to_string()),
            None => out.push_str(&i.to_string()),
        }
        out.push(':');
        tokens_text(f.ty.to_token_stream(), out);
        out.push(';');
    }
    out.push(close);
}

/// Writes the tokens with no spacing except one space between two words (identifiers or
/// literals), which would otherwise run together.
fn tokens_text(tokens: TokenStream, out: &mut String) {
    let mut last_was_word = false;
    for tt in tokens {
        match tt {
            TokenTree::Ident(i) => {
                if last_was_word {
                    out.push(' ');
                }
                out.push_str(&i.to_string());
                last_was_word = true;
            }
            TokenTree::Literal(l) => {
                if last_was_word {
                    out.push(' ');
                }
                out.push_str(&l.to_string());
                last_was_word = true;
            }
            TokenTree::Punct(p) => {
                out.push(p.as_char());
                last_was_word = false;
            }
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                tokens_text(g.stream(), out);
                out.push_str(close);
                last_was_word = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(src: &str) -> String {
        let input: DeriveInput = syn::parse_str(src).unwrap();
        let name = input.ident.to_string();
        canonical_text(&input, &name)
    }

    #[test]
    fn spacing_does_not_matter() {
        assert_eq!(
            text("struct A { x : Vec < [ f32 ; 4 ] >, y: Option<Handle<B>> }"),
            text("struct A{x:Vec<[f32;4]>,y:Option<Handle<B>>}")
        );
        assert_eq!(
            text("struct A { x: Vec<[f32; 4]>, y: Option<Handle<B>> }"),
            "neurostore-schema-v1|A|struct{x:Vec<[f32;4]>;y:Option<Handle<B>>;}"
        );
    }

    #[test]
    fn shapes_are_told_apart() {
        let texts = [
            text("struct A;"),
            text("struct A();"),
            text("struct A {}"),
            text("struct A(u32);"),
            text("struct A { u: u32 }"),
            text("enum A { U(u32) }"),
            text("enum A { U { u: u32 } }"),
            text("enum A { U = 1 }"),
            text("enum A { U = 2 }"),
        ];
        for (i, a) in texts.iter().enumerate() {
            for b in &texts[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn paths_keep_their_words_apart() {
        assert_eq!(
            text("struct A { x: dyn Send }"),
            "neurostore-schema-v1|A|struct{x:dyn Send;}"
        );
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
