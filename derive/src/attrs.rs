//! `#[pooled(...)]` attributes: parsed, checked, and turned into errors with spans.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Attribute, LitInt, LitStr};

/// Keys accepted on the type.
const CONTAINER_KEYS: &str = "`name`, `retention`, `align`, `kind`, `lifetime`, `pod`, `serde`";
/// Largest `align` accepted: the pool aligns chunks to at most a page.
pub(crate) const MAX_ALIGN: u64 = 4096;

/// What the type-level attributes asked for.
#[derive(Default)]
pub(crate) struct ContainerAttrs {
    /// `name = "..."`.
    pub name: Option<LitStr>,
    /// `retention = "manual" | "traced"`, as the variant name of `neurostore::Retention`.
    pub retention: Option<&'static str>,
    /// `align = N`, with the literal's span.
    pub align: Option<(u64, Span)>,
    /// `kind = "..."`, as the variant name of `neurostore::ObjectKind`.
    pub kind: Option<&'static str>,
    /// `lifetime = "..."`, as the variant name of `neurostore::Lifetime`.
    pub lifetime: Option<&'static str>,
    /// `pod`, with its span.
    pub pod: Option<Span>,
    /// `serde`, with its span.
    pub serde: Option<Span>,
}

/// Parses every `#[pooled(...)]` on the type.
pub(crate) fn container(attrs: &[Attribute]) -> syn::Result<ContainerAttrs> {
    let mut out = ContainerAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("pooled")) {
        attr.parse_nested_meta(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            match key.as_str() {
                "name" => set_once(&meta, &key, &mut out.name, type_name(&meta)?),
                "retention" => {
                    let v = choice(&meta, "retention", &[("manual", "Manual"), ("traced", "Traced")])?;
                    set_once(&meta, &key, &mut out.retention, v)
                }
                "kind" => set_once(&meta, &key, &mut out.kind, choice(&meta, "kind", KINDS)?),
                "lifetime" => {
                    let v = choice(
                        &meta,
                        "lifetime",
                        &[("short", "Short"), ("medium", "Medium"), ("long", "Long")],
                    )?;
                    set_once(&meta, &key, &mut out.lifetime, v)
                }
                "align" => set_once(&meta, &key, &mut out.align, alignment(&meta)?),
                "pod" | "serde" => encoding(&meta, &key, &mut out),
                "skip" => Err(meta.error(
                    "`skip` goes on a field: #[pooled(skip)] before the field to leave out of tracing",
                )),
                _ => Err(meta.error(format!(
                    "unknown pooled attribute `{}`; expected one of {CONTAINER_KEYS}",
                    path_text(&meta.path)
                ))),
            }
        })?;
    }
    Ok(out)
}

/// The values of `kind`, and the `neurostore::ObjectKind` variant each names.
const KINDS: &[(&str, &str)] = &[
    ("neuron", "Neuron"),
    ("synapse", "Synapse"),
    ("weight", "Weight"),
    ("signal", "Signal"),
    ("activation", "Activation"),
    ("gradient", "Gradient"),
];

/// `name = "..."`: a non-empty name without whitespace.
fn type_name(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<LitStr> {
    let lit: LitStr = meta.value()?.parse()?;
    let value = lit.value();
    if value.is_empty() || value.chars().any(char::is_whitespace) {
        return Err(syn::Error::new(
            lit.span(),
            "`name` must be a non-empty name without whitespace, such as \"Neuron\"",
        ));
    }
    Ok(lit)
}

/// `align = N`: a power of two up to `MAX_ALIGN`, with the literal's span.
fn alignment(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<(u64, Span)> {
    let lit: LitInt = meta.value()?.parse()?;
    let value: u64 = lit.base10_parse().unwrap_or(0);
    if !value.is_power_of_two() || value > MAX_ALIGN {
        return Err(syn::Error::new(
            lit.span(),
            format!("`align` must be a power of two from 1 to {MAX_ALIGN}, such as 64"),
        ));
    }
    Ok((value, lit.span()))
}

/// `pod` or `serde` (`key`): a flag, and at most one of the two.
fn encoding(
    meta: &syn::meta::ParseNestedMeta<'_>,
    key: &str,
    out: &mut ContainerAttrs,
) -> syn::Result<()> {
    if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
        return Err(meta.error(format!("`{key}` takes no value: write #[pooled({key})]")));
    }
    let (this, other, other_key) = if key == "pod" {
        (&mut out.pod, &out.serde, "serde")
    } else {
        (&mut out.serde, &out.pod, "pod")
    };
    if other.is_some() {
        return Err(meta.error(format!(
            "`pod` and `serde` are two snapshot encodings: choose one \
             (`{other_key}` is already given)"
        )));
    }
    set_once(meta, key, this, meta.path.span())
}

/// Sets an attribute's value; a key given twice is an error at the second one.
fn set_once<T>(
    meta: &syn::meta::ParseNestedMeta<'_>,
    key: &str,
    slot: &mut Option<T>,
    value: T,
) -> syn::Result<()> {
    match slot.replace(value) {
        Some(_) => Err(meta.error(format!("duplicate pooled attribute `{key}`"))),
        None => Ok(()),
    }
}

/// Parses every `#[pooled(...)]` on a field: true when it says `skip`.
pub(crate) fn field_skipped(attrs: &[Attribute]) -> syn::Result<bool> {
    let mut skip = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("pooled")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                    return Err(meta.error("`skip` takes no value: write #[pooled(skip)]"));
                }
                if skip {
                    return Err(meta.error("duplicate pooled attribute `skip`"));
                }
                skip = true;
                Ok(())
            } else {
                Err(meta.error(format!(
                    "unknown pooled field attribute `{}`; the only field attribute is `skip` \
                     (type attributes such as {CONTAINER_KEYS} go on the type)",
                    path_text(&meta.path)
                )))
            }
        })?;
    }
    Ok(skip)
}

/// Refuses `#[pooled(...)]` on an enum variant.
pub(crate) fn no_variant_attrs(attrs: &[Attribute]) -> syn::Result<()> {
    match attrs.iter().find(|a| a.path().is_ident("pooled")) {
        Some(attr) => Err(syn::Error::new(
            attr.span(),
            "pooled attributes go on the type or on fields, not on enum variants",
        )),
        None => Ok(()),
    }
}

/// A string value that must be one of `options` (attribute spelling, Rust variant name).
fn choice(
    meta: &syn::meta::ParseNestedMeta<'_>,
    key: &str,
    options: &[(&str, &'static str)],
) -> syn::Result<&'static str> {
    let lit: LitStr = meta.value()?.parse()?;
    let value = lit.value();
    options
        .iter()
        .find(|(spelling, _)| *spelling == value)
        .map(|(_, variant)| *variant)
        .ok_or_else(|| {
            let expected: Vec<String> = options.iter().map(|(s, _)| format!("\"{s}\"")).collect();
            syn::Error::new(
                lit.span(),
                format!(
                    "unknown {key} \"{value}\"; expected one of {}",
                    expected.join(", ")
                ),
            )
        })
}

fn path_text(path: &syn::Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}
