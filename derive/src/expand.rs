//! The generated `Pooled` and `Trace` impls, and the checks on the input's shape.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, GenericArgument, GenericParam, PathArguments, Type};

use crate::attrs;
use crate::schema;

/// Both impls for `input`, or every error found in it.
pub(crate) fn pooled(input: &DeriveInput) -> syn::Result<TokenStream> {
    let (container, traced_fields) = checked_input(input)?;
    let ident = &input.ident;
    let type_name = container
        .name
        .as_ref()
        .map_or_else(|| ident.to_string(), syn::LitStr::value);
    let token_hash = schema::fnv1a(schema::canonical_text(input, &type_name).as_bytes());
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let (codec, pooled_bounds) = codec_and_bounds(input, &container);
    let pooled_where = merge_where(where_clause, &pooled_bounds);
    let trace_bounds: Vec<TokenStream> = input
        .generics
        .type_params()
        .map(|p| {
            let p = &p.ident;
            quote!(#p: ::neurostore::Trace)
        })
        .collect();
    let trace_where = merge_where(where_clause, &trace_bounds);
    let hints = hints(&container);
    let registrations = link_time_registrations(input);
    let trace_body = trace_body(input, &traced_fields);
    let traced_types = traced_types(input, &traced_fields);
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::neurostore::Pooled for #ident #ty_generics #pooled_where {
            const TYPE_NAME: &'static str = #type_name;
            const SCHEMA: u64 = ::neurostore::pooled::schema_fingerprint(
                #token_hash,
                ::core::mem::size_of::<Self>(),
                ::core::mem::align_of::<Self>(),
            );
            const HINTS: ::neurostore::PoolHints = #hints;
            #codec
        }

        #registrations

        #[automatically_derived]
        impl #impl_generics ::neurostore::Trace for #ident #ty_generics #trace_where {
            const HOLDS_HANDLES: bool = false #(|| <#traced_types as ::neurostore::Trace>::HOLDS_HANDLES)*;
            #[inline]
            fn trace(&self, tracer: &mut ::neurostore::Tracer<'_>) {
                let _ = &tracer;
                #trace_body
            }
        }
    })
}

/// The container attributes and, per variant (one for a struct), which fields are traced;
/// or every error found in the input: a union, a lifetime parameter, a field that
/// borrows, a bad attribute.
fn checked_input(input: &DeriveInput) -> syn::Result<(attrs::ContainerAttrs, Vec<Vec<bool>>)> {
    let mut errors = Errors::default();
    let container = errors.keep(attrs::container(&input.attrs));
    if let Data::Union(u) = &input.data {
        errors.push(syn::Error::new(
            u.union_token.span(),
            "Pooled cannot be derived for a union: the store could not tell which field holds \
             a handle; use an enum",
        ));
    }
    for param in &input.generics.params {
        if let GenericParam::Lifetime(l) = param {
            errors.push(syn::Error::new(
                l.span(),
                "a Pooled type owns its data and cannot borrow: remove the lifetime parameter \
                 and store a Handle instead",
            ));
        }
    }
    // Every field: checked for pointers and references, and kept unless skipped.
    let mut traced_fields: Vec<Vec<bool>> = Vec::new();
    for fields in all_fields(input) {
        let mut kept = Vec::new();
        for field in fields {
            check_owned(&field.ty, &mut errors);
            kept.push(
                !errors
                    .keep(attrs::field_skipped(&field.attrs))
                    .unwrap_or(false),
            );
        }
        traced_fields.push(kept);
    }
    if let Data::Enum(e) = &input.data {
        for v in &e.variants {
            errors.keep(attrs::no_variant_attrs(&v.attrs));
        }
    }
    errors.finish()?;
    Ok((container.unwrap_or_default(), traced_fields))
}

/// The `CODEC` constant (none for the trait's default) and the bounds of the `Pooled`
/// impl: every type parameter is 'static (Pooled: 'static), and a generic type is `Pooled`
/// only where it has what its encoding needs.
fn codec_and_bounds(
    input: &DeriveInput,
    container: &attrs::ContainerAttrs,
) -> (Option<TokenStream>, Vec<TokenStream>) {
    let ident = &input.ident;
    let (_, ty_generics, _) = input.generics.split_for_impl();
    let generic = !input.generics.params.is_empty();
    let mut bounds: Vec<TokenStream> = input
        .generics
        .type_params()
        .map(|p| {
            let p = &p.ident;
            quote!(#p: 'static)
        })
        .collect();
    // Raw bytes for `pod`, serde + bincode for `serde`. The constant names the
    // attribute's span, so a concrete type that lacks the traits is blamed there, once.
    let codec = if let Some(span) = container.pod {
        if generic {
            bounds.push(quote_spanned!(span=>
                #ident #ty_generics: ::neurostore::pooled::__private::Pod
            ));
        }
        Some(quote_spanned!(span=>
            const CODEC: ::neurostore::snapshot::Codec<Self> = ::neurostore::snapshot::Codec::pod();
        ))
    } else if let Some(span) = container.serde {
        if generic {
            bounds.push(quote_spanned!(span=>
                #ident #ty_generics: ::neurostore::pooled::__private::Serialize
                    + ::neurostore::pooled::__private::DeserializeOwned
            ));
        }
        Some(quote_spanned!(span=>
            const CODEC: ::neurostore::snapshot::Codec<Self> = ::neurostore::snapshot::Codec::serde();
        ))
    } else {
        None
    };
    (codec, bounds)
}

/// The `HINTS` value.
fn hints(container: &attrs::ContainerAttrs) -> TokenStream {
    let retention = format_ident!("{}", container.retention.unwrap_or("Manual"));
    let align = container.align.map_or(0, |(a, _)| a as usize);
    let align_span = container
        .align
        .map_or_else(proc_macro2::Span::call_site, |(_, s)| s);
    let kind = option_variant(quote!(ObjectKind), container.kind);
    let lifetime = option_variant(quote!(Lifetime), container.lifetime);
    let pod = container.pod.is_some();
    let align_expr = quote_spanned!(align_span=>
        match ::neurostore::pooled::hint_align::<Self>(#align) {
            ::core::result::Result::Ok(align) => align,
            ::core::result::Result::Err(e) => ::core::panic!("{}", e.message()),
        }
    );
    quote! {
        ::neurostore::PoolHints {
            retention: ::neurostore::Retention::#retention,
            align: #align_expr,
            kind: #kind,
            lifetime: #lifetime,
            pod: #pod,
        }
    }
}

/// For a concrete type: its hints checked when the crate compiles, and its registrations
/// with the store and the snapshot layer when the program links, so that a store builds
/// its table from the hints whatever makes the first object and a load knows it by name.
/// Nothing for a generic type (a static cannot name every instance; its hints are checked
/// when an instance is used).
fn link_time_registrations(input: &DeriveInput) -> Option<TokenStream> {
    let ident = &input.ident;
    input.generics.params.is_empty().then(|| {
        quote! {
            const _: () = {
                let _ = <#ident as ::neurostore::Pooled>::HINTS;
            };

            ::neurostore::store::__private::inventory::submit! {
                ::neurostore::store::__private::Registration::new(
                    || ::core::any::TypeId::of::<#ident>(),
                    <#ident as ::neurostore::Pooled>::HINTS,
                    |store| {
                        #[allow(unused_imports)]
                        use ::neurostore::store::__private::{Unstorable as _, ViaStore as _};
                        (&&::neurostore::store::__private::Probe::<#ident>::new()).in_store(store)
                    },
                )
            }

            ::neurostore::store::__private::inventory::submit! {
                ::neurostore::store::__private::SnapshotRegistration::new(|registry| {
                    #[allow(unused_imports)]
                    use ::neurostore::store::__private::{Unlistable as _, ViaRegistry as _};
                    (&&::neurostore::store::__private::Probe::<#ident>::new())
                        .in_registry(registry)
                })
            }
        }
    })
}

/// The types of the traced fields, for `HOLDS_HANDLES`.
fn traced_types<'a>(input: &'a DeriveInput, traced_fields: &[Vec<bool>]) -> Vec<&'a syn::Type> {
    all_fields(input)
        .into_iter()
        .zip(traced_fields)
        .flat_map(|(fields, kept)| {
            fields
                .into_iter()
                .zip(kept)
                .filter(|(_, k)| **k)
                .map(|(f, _)| &f.ty)
        })
        .collect()
}

/// The body of `trace`: one call per kept field, through a `match` for enums.
fn trace_body(input: &DeriveInput, kept: &[Vec<bool>]) -> TokenStream {
    match &input.data {
        Data::Struct(s) => {
            let calls = s
                .fields
                .iter()
                .zip(&kept[0])
                .enumerate()
                .filter(|(_, (_, k))| **k)
                .map(|(i, (f, _))| {
                    let member = match &f.ident {
                        Some(ident) => quote!(#ident),
                        None => {
                            let index = syn::Index::from(i);
                            quote!(#index)
                        }
                    };
                    visit(f, quote!(&self.#member))
                });
            quote!(#(#calls)*)
        }
        Data::Enum(e) if e.variants.is_empty() => quote!(match *self {}),
        Data::Enum(e) => {
            let arms = e
                .variants
                .iter()
                .zip(kept)
                .map(|(v, kept)| variant_arm(v, kept));
            quote!(match self { #(#arms)* })
        }
        Data::Union(_) => quote!(),
    }
}

/// The call that traces `field` through `access`, naming the field's type as written, so
/// that a type that lacks `Trace` is blamed there.
fn visit(field: &syn::Field, access: TokenStream) -> TokenStream {
    let ty = &field.ty;
    quote_spanned!(ty.span()=> <#ty as ::neurostore::Trace>::trace(#access, tracer);)
}

/// The `match` arm of one enum variant: its kept fields bound by name (skipped ones match
/// `_`) and traced.
fn variant_arm(v: &syn::Variant, kept: &[bool]) -> TokenStream {
    let name = &v.ident;
    let bindings: Vec<TokenStream> = kept
        .iter()
        .enumerate()
        .map(|(i, k)| {
            if *k {
                let b = format_ident!("__field{}", i);
                quote!(#b)
            } else {
                quote!(_)
            }
        })
        .collect();
    let calls = v
        .fields
        .iter()
        .zip(kept)
        .zip(&bindings)
        .filter(|((_, k), _)| **k)
        .map(|((f, _), b)| visit(f, b.clone()));
    let pattern = match &v.fields {
        Fields::Named(named) => {
            let names = named.named.iter().map(|f| &f.ident);
            quote!(Self::#name { #(#names: #bindings),* })
        }
        Fields::Unnamed(_) => quote!(Self::#name(#(#bindings),*)),
        Fields::Unit => quote!(Self::#name),
    };
    quote!(#pattern => { #(#calls)* })
}

/// The fields of a struct, or of each variant of an enum.
fn all_fields(input: &DeriveInput) -> Vec<Vec<&syn::Field>> {
    match &input.data {
        Data::Struct(s) => vec![s.fields.iter().collect()],
        Data::Enum(e) => e
            .variants
            .iter()
            .map(|v| v.fields.iter().collect())
            .collect(),
        Data::Union(u) => vec![u.fields.named.iter().collect()],
    }
}

/// Refuses raw pointers and references anywhere in a field's type.
fn check_owned(ty: &Type, errors: &mut Errors) {
    match ty {
        Type::Ptr(p) => errors.push(syn::Error::new_spanned(
            p,
            "a raw pointer cannot be stored in a Pooled type: the store moves objects and \
             snapshots them to disk, so the pointer would dangle; store a Handle instead",
        )),
        Type::Reference(r) => errors.push(syn::Error::new_spanned(
            r,
            "a reference cannot be stored in a Pooled type: objects live in the store, not \
             on a borrow; store a Handle instead",
        )),
        Type::Array(a) => check_owned(&a.elem, errors),
        Type::Slice(s) => check_owned(&s.elem, errors),
        Type::Paren(p) => check_owned(&p.elem, errors),
        Type::Group(g) => check_owned(&g.elem, errors),
        Type::Tuple(t) => t.elems.iter().for_each(|e| check_owned(e, errors)),
        Type::Path(p) => {
            if let Some(q) = &p.qself {
                check_owned(&q.ty, errors);
            }
            for seg in &p.path.segments {
                if let PathArguments::AngleBracketed(args) = &seg.arguments {
                    for arg in &args.args {
                        if let GenericArgument::Type(t) = arg {
                            check_owned(t, errors);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// `Some(::neurostore::Enum::Variant)` or `None`.
fn option_variant(enum_name: TokenStream, variant: Option<&str>) -> TokenStream {
    match variant {
        Some(v) => {
            let v = format_ident!("{}", v);
            quote!(::core::option::Option::Some(::neurostore::#enum_name::#v))
        }
        None => quote!(::core::option::Option::None),
    }
}

/// The input's where clause with `extra` predicates added.
fn merge_where(existing: Option<&syn::WhereClause>, extra: &[TokenStream]) -> TokenStream {
    let existing: Vec<_> = existing
        .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
        .unwrap_or_default();
    if existing.is_empty() && extra.is_empty() {
        return quote!();
    }
    quote!(where #(#existing,)* #(#extra,)*)
}

/// Errors gathered so that one compile shows them all.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    fn keep<T>(&mut self, r: syn::Result<T>) -> Option<T> {
        r.map_err(|e| self.push(e)).ok()
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}
