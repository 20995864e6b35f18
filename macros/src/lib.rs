//! The `#[static_call]` attribute. An implementation detail of the
//! `static_call` crate, which re-exports it: depend on that crate instead.
//!
//! The expansion names nothing but `::static_call::__private`, and leaves
//! every platform decision to that crate (its `backend!` macro picks the
//! inline-asm or the portable body by its own `cfg`).

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Attribute, Expr, Ident, ReturnType, Token, Type, TypeBareFn, Visibility};

/// Declares a static call key.
///
/// ```ignore
/// #[static_call]
/// pub static HASH: extern "C" fn(u64) -> u64 = fnv1a;   // with a default target
/// #[static_call]
/// static ON_EVENT: extern "C" fn(u32);                   // with no target yet
/// #[static_call(out_of_line)]
/// static BIG: extern "C" fn(Big) -> Big = big;           // any C signature
/// ```
///
/// See the `static_call` crate for the rules.
#[proc_macro_attribute]
pub fn static_call(args: proc_macro::TokenStream, input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let args = TokenStream::from(args);
    let input = TokenStream::from(input);
    match expand(args, input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

const FORMS: &str = "expected `static NAME: fn(..) -> R = target;` (a Rust fn type), `static NAME: extern \"C\" \
                     fn(..) -> R = target;` or `static NAME: extern \"C\" fn(..);` (no target; return type `()` or \
                     zeroable)";

struct Decl {
    attrs: Vec<Attribute>,
    vis: Visibility,
    ident: Ident,
    ty: Type,
    target: Option<Expr>,
}

impl Parse for Decl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        if input.peek(Token![const]) {
            return Err(input.error(format!("#[static_call] goes on a `static`, not a `const`: {FORMS}")));
        }
        if !input.peek(Token![static]) {
            return Err(input.error(format!("#[static_call] goes on a `static` item: {FORMS}")));
        }
        input.parse::<Token![static]>()?;
        if input.peek(Token![mut]) {
            let m: Token![mut] = input.parse()?;
            return Err(syn::Error::new(
                m.span,
                "a static call key cannot be `static mut`: retarget it with `KEY.update(f)`, which is safe and \
                 patches every call site",
            ));
        }
        let ident: Ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let ty: Type = input.parse()?;
        let target = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        input.parse::<Token![;]>()?;
        Ok(Decl { attrs, vis, ident, ty, target })
    }
}

#[derive(Default)]
struct Args {
    out_of_line: bool,
    /// `crate = path`: where the `static_call` crate is, for a facade
    /// that re-exports the macro.
    krate: Option<syn::Path>,
}

fn parse_args(args: TokenStream) -> syn::Result<Args> {
    let mut out = Args::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("out_of_line") {
            out.out_of_line = true;
            Ok(())
        } else if meta.path.is_ident("crate") {
            let value = meta.value()?;
            out.krate =
                Some(if value.peek(syn::LitStr) { value.parse::<syn::LitStr>()?.parse()? } else { value.parse()? });
            Ok(())
        } else {
            Err(meta.error(
                "unknown argument; the valid forms are `#[static_call]`, `#[static_call(out_of_line)]` and \
                 `#[static_call(crate = path::to::static_call)]` (for a crate that re-exports this macro)",
            ))
        }
    });
    syn::parse::Parser::parse2(parser, args)?;
    Ok(out)
}

/// How a value travels at an inline site.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Integer,
    Float,
}

fn classify(ty: &Type) -> Class {
    match ty {
        Type::Path(p) if p.qself.is_none() && is_float_path(&p.path) => Class::Float,
        Type::Paren(p) => classify(&p.elem),
        Type::Group(g) => classify(&g.elem),
        _ => Class::Integer,
    }
}

/// `f32`/`f64`, also as `core::primitive::f64` or `std::primitive::f64`. (A
/// type alias of a float cannot be recognized: it is refused as an integer.)
fn is_float_path(path: &syn::Path) -> bool {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    if path.segments.iter().any(|s| !s.arguments.is_none()) {
        return false;
    }
    let prefix_ok = match segments.len() {
        1 => path.leading_colon.is_none(),
        3 => matches!(segments[0].as_str(), "core" | "std") && segments[1] == "primitive",
        _ => false,
    };
    prefix_ok && matches!(segments.last().map(String::as_str), Some("f32" | "f64"))
}

fn is_unit(ret: &ReturnType) -> bool {
    match ret {
        ReturnType::Default => true,
        ReturnType::Type(_, t) => matches!(&**t, Type::Tuple(t) if t.elems.is_empty()),
    }
}

/// The return type with every lifetime made `'static`, for the
/// `Key<F, R>` type parameter.
fn static_ret(ret: &ReturnType) -> Type {
    struct Staticize;
    impl VisitMut for Staticize {
        fn visit_lifetime_mut(&mut self, l: &mut syn::Lifetime) {
            *l = syn::Lifetime::new("'static", l.span());
        }
        fn visit_type_reference_mut(&mut self, r: &mut syn::TypeReference) {
            if r.lifetime.is_none() {
                r.lifetime = Some(syn::Lifetime::new("'static", r.and_token.span));
            }
            syn::visit_mut::visit_type_reference_mut(self, r);
        }
    }
    match ret {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => {
            let mut t = (**t).clone();
            Staticize.visit_type_mut(&mut t);
            t
        }
    }
}

/// Integer-class argument registers, x86-64 (System V) then aarch64
/// (AAPCS64). AAPCS64 has eight (`x0`..`x7`); sites take at most six on
/// every architecture, so that a key that compiles on one compiles on the
/// other.
const INT_REGS: [(&str, &str); 6] =
    [("rdi", "x0"), ("rsi", "x1"), ("rdx", "x2"), ("rcx", "x3"), ("r8", "x4"), ("r9", "x5")];
const FLOAT_REGS: [(&str, &str); 8] = [
    ("xmm0", "v0"),
    ("xmm1", "v1"),
    ("xmm2", "v2"),
    ("xmm3", "v3"),
    ("xmm4", "v4"),
    ("xmm5", "v5"),
    ("xmm6", "v6"),
    ("xmm7", "v7"),
];
/// The return registers: integer, float (x86-64, aarch64).
const INT_RET: (&str, &str) = ("rax", "x0");
const FLOAT_RET: (&str, &str) = ("xmm0", "v0");

/// The user's attributes on a key, sorted by where they go: docs on the
/// static only (what the macro adds goes below them, and only if there are
/// some, so that `missing_docs` sees an undocumented key); `cfg` on every
/// item the macro emits; lint levels on every item too (`expect` as `allow`
/// beyond the static, where it could go unfulfilled); anything else on the
/// static only.
struct Attrs {
    docs: Vec<Attribute>,
    cfgs: Vec<Attribute>,
    lints: Vec<Attribute>,
    lints_elsewhere: Vec<Attribute>,
    rest: Vec<Attribute>,
}

fn sort_attrs(attrs: &[Attribute]) -> Attrs {
    let mut out =
        Attrs { docs: Vec::new(), cfgs: Vec::new(), lints: Vec::new(), lints_elsewhere: Vec::new(), rest: Vec::new() };
    for a in attrs {
        let path = a.path();
        if path.is_ident("doc") {
            out.docs.push(a.clone());
        } else if path.is_ident("cfg") {
            out.cfgs.push(a.clone());
        } else if ["allow", "warn", "deny", "forbid"].iter().any(|l| path.is_ident(l)) {
            out.lints.push(a.clone());
            out.lints_elsewhere.push(a.clone());
        } else if path.is_ident("expect") {
            out.lints.push(a.clone());
            let mut allow = a.clone();
            if let syn::Meta::List(l) = &mut allow.meta {
                l.path = syn::parse_quote!(allow);
            }
            out.lints_elsewhere.push(allow);
        } else {
            out.rest.push(a.clone());
        }
    }
    out
}

/// The names of a key's arguments: the ones its type gives (`fn(req:
/// &Request)`), else `arg0`, `arg1`, ...
fn arg_names(f: &TypeBareFn) -> Vec<Ident> {
    let given: Vec<String> =
        f.inputs.iter().filter_map(|a| a.name.as_ref().map(|(id, _)| id.to_string())).filter(|n| n != "_").collect();
    f.inputs
        .iter()
        .enumerate()
        .map(|(i, a)| match &a.name {
            Some((id, _)) if id != "_" => Ident::new(&id.to_string(), id.span()),
            _ => {
                // Not one the type gives another argument.
                let mut name = format!("arg{i}");
                while given.contains(&name) {
                    name.push('_');
                }
                Ident::new(&name, proc_macro2::Span::call_site())
            }
        })
        .collect()
}

/// The names the expansion's bodies use for the arguments, bound from the
/// signature's names first thing (`let (..) = (..);`), so that no name a
/// user gives an argument can meet a local of the expansion.
fn inner_names(n: usize) -> Vec<Ident> {
    (0..n).map(|i| format_ident!("__sc_arg{}", i)).collect()
}

/// A name for a generic parameter that no identifier in `tokens` (the key's
/// type) is: a user type of that name would otherwise be hidden by it.
fn fresh_type_name(base: &str, tokens: &TokenStream) -> Ident {
    fn idents(t: &TokenStream, out: &mut Vec<String>) {
        for tt in t.clone() {
            match tt {
                proc_macro2::TokenTree::Ident(i) => out.push(i.to_string()),
                proc_macro2::TokenTree::Group(g) => idents(&g.stream(), out),
                _ => {}
            }
        }
    }
    let mut used = Vec::new();
    idents(tokens, &mut used);
    let mut name = base.to_string();
    while used.contains(&name) {
        name.push('_');
    }
    Ident::new(&name, proc_macro2::Span::call_site())
}

fn expand(args: TokenStream, input: TokenStream) -> syn::Result<TokenStream> {
    let args = parse_args(args)?;
    let decl: Decl = syn::parse2(input)?;
    let Decl { ty, .. } = &decl;

    let Type::BareFn(f) = ty else {
        let alias = if matches!(ty, Type::Path(_)) {
            " here, spelled out: the macro reads the signature from it, so it cannot see through a type alias"
        } else {
            ""
        };
        return Err(syn::Error::new_spanned(
            ty,
            format!(
                "a static call key's type is a function pointer: write `fn(..) -> R` or `extern \"C\" fn(..) -> \
                 R` (or their `unsafe` forms){alias}"
            ),
        ));
    };
    let rust = check_abi(f, args.out_of_line)?;
    if let Some(v) = &f.variadic {
        return Err(syn::Error::new_spanned(
            v,
            "variadic targets cannot be static calls: declare a fixed signature, e.g. with a pointer and a count",
        ));
    }
    if let ReturnType::Type(_, t) = &f.output {
        if let Type::Never(n) = &**t {
            return Err(syn::Error::new_spanned(
                n,
                "a static call target cannot return `!`: return `()` (a call with no target must be able to return)",
            ));
        }
    }
    let krate = args.krate.clone().unwrap_or_else(|| syn::parse_quote!(::static_call));
    let sc = quote!(#krate::__private);
    if rust {
        expand_rust(&args, &decl, f, &sc)
    } else {
        expand_c(&args, &decl, f, &sc)
    }
}

/// The items every key has: the static (of the marker type named like it),
/// the marker type, and its docs.
struct Common {
    marker: Ident,
    key: Ident,
    holder: Ident,
    names: Vec<Ident>,
    tys: Vec<Type>,
    sig: String,
    attrs: Attrs,
}

fn common(decl: &Decl, f: &TypeBareFn) -> Common {
    Common {
        marker: decl.ident.clone(),
        key: format_ident!("__STATIC_CALL_KEY_{}", decl.ident),
        holder: format_ident!("__static_call_trampoline_{}", decl.ident),
        names: arg_names(f),
        tys: f.inputs.iter().map(|a| a.ty.clone()).collect(),
        sig: tidy(&quote!(#f).to_string()),
        attrs: sort_attrs(&decl.attrs),
    }
}

/// The static itself: the user's docs, then ours below them (none when the
/// user wrote none: `missing_docs` then fires, at the key).
fn key_static(decl: &Decl, c: &Common, what: &str) -> TokenStream {
    let Attrs { docs, cfgs, lints, rest, .. } = &c.attrs;
    let (vis, ident, marker) = (&decl.vis, &decl.ident, &c.marker);
    let ours = if docs.is_empty() {
        quote!()
    } else {
        let text = format!(
            "Static call key `{}`{what}: `{ident}.call(..)` calls its target, `{ident}.update(f)` retargets \
             every call site, `{ident}.get()` reads the target (see the type `{ident}`).",
            c.sig
        );
        quote!(#[doc = ""] #[doc = #text])
    };
    quote! {
        #(#cfgs)* #(#lints)* #(#docs)* #ours #(#rest)*
        #vis static #ident: #marker = #marker { __static_call: () };
    }
}

/// The items every key has besides its own: the static (already built),
/// the marker type named like it, and `Debug` (name, target, site count).
fn marker_items(c: &Common, vis: &Visibility, the_static: &TokenStream, type_doc: &str, key: &Ident) -> TokenStream {
    let Attrs { cfgs, lints_elsewhere: lints, .. } = &c.attrs;
    let marker = &c.marker;
    let name = marker.to_string();
    quote! {
        #the_static

        #(#cfgs)* #(#lints)*
        #[doc = #type_doc]
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy)]
        #vis struct #marker {
            __static_call: (),
        }

        #(#cfgs)* #(#lints)*
        impl ::core::fmt::Debug for #marker {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(#name)
                    .field("target", &#key.get())
                    .field("sites", &#key.sites().len())
                    .finish()
            }
        }
    }
}

fn expand_c(args: &Args, decl: &Decl, f: &TypeBareFn, sc: &TokenStream) -> syn::Result<TokenStream> {
    let Decl { vis, ident, ty, target, .. } = decl;
    let c = common(decl, f);
    let Common { marker, key, holder, names: user_names, tys: arg_tys, sig, .. } = &c;
    let arg_names = &inner_names(user_names.len());
    let Attrs { cfgs, lints_elsewhere: lints, .. } = &c.attrs;
    let unit = is_unit(&f.output);
    let ret_static = static_ret(&f.output);
    let ret_ty = match &f.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, t) => quote!(#t),
    };
    let unsafety = &f.unsafety;
    let output = &f.output;
    let lifetimes = f.lifetimes.as_ref().map(|b| {
        let l = &b.lifetimes;
        quote!(<#l>)
    });
    // The key's type, named inside `call` without repeating a `for<'a>`
    // binder whose lifetimes `call` itself declares.
    let fn_ty = quote!(<#marker as #sc::StaticCall>::Fn);
    let arg_tys: Vec<&Type> = arg_tys.iter().collect();

    // The key: its slot starts at the default target, or (null here) the
    // no-target stub `Key::__new` puts there.
    let no_target = if unit { quote!(#sc::NoTarget::Nop) } else { quote!(#sc::NoTarget::Zero) };
    let (init, zero_check) = match target {
        Some(t) => (quote!(__TARGET as *mut ()), quote!(const __TARGET: #ty = #t;)),
        None => {
            let span = match &f.output {
                ReturnType::Default => ident.span(),
                ReturnType::Type(_, t) => t.span(),
            };
            (
                quote!(::core::ptr::null_mut()),
                quote_spanned!(span=> const _: () = #sc::assert_zeroable::<#ret_static>();),
            )
        }
    };

    let (prelude, inline_body) = if args.out_of_line {
        let body = quote!({
            // SAFETY: the trampoline jumps to a target of type `#ty` (or does
            // nothing and returns zero, which needs `Zeroable`), so calling it
            // as one is calling the target.
            let __f = unsafe { ::core::mem::transmute::<*const (), #fn_ty>(#sc::trampoline_addr!(#key)) };
            #[allow(unused_unsafe)]
            unsafe { __f(#(#arg_names),*) }
        });
        (quote!(), body)
    } else {
        let site = inline_site(f, key, arg_names, &arg_tys, unit, sc)?;
        (site.prelude, site.body)
    };

    let portable_body = quote!({
        let __p = #key.__raw().load();
        if __p.is_null() {
            // SAFETY: a null slot means the return type is `Zeroable` (see
            // `zeroed_return`).
            unsafe { #sc::zeroed_return::<#ret_ty>() }
        } else {
            // SAFETY: a non-null slot holds a `#ty`.
            let __f = unsafe { ::core::mem::transmute::<*mut (), #fn_ty>(__p) };
            #[allow(unused_unsafe)]
            unsafe { __f(#(#arg_names),*) }
        }
    });

    let what = match target {
        Some(_) => String::new(),
        None => ", with no target until updated".to_string(),
    };
    let the_static = key_static(decl, &c, &what);
    let can_reset = may_be_zeroable(&f.output);
    let type_doc = format!(
        "The type of the static call key [`{ident}`](static@{ident}), whose target type is `{sig}`. \
         `call` is a call site; through `Deref` it is a `static_call::Key`: `update`, \
         `try_update`, `get`, `sites`{}.",
        if can_reset { ", and `reset` where the return type allows no target" } else { "" }
    );
    let doc_call = format!(
        "Calls the current target of [`{ident}`](static@{ident}){}.",
        if args.out_of_line { " through its trampoline" } else { ": an inline call site" }
    );
    // Declared either way, so that a return type without a zero value is
    // reported at the call by name; not shown in the docs of a key that
    // cannot reset.
    let hidden = if can_reset { quote!() } else { quote!(#[doc(hidden)]) };
    let reset = {
        quote! {
            /// Removes the target: calls do nothing and return zero. Returns
            /// the previous target. See `Key::reset`.
            ///
            /// Declared here rather than only on `Key` so that a return type
            /// without a zero value is reported at the call, by name.
            #hidden
            #[track_caller]
            #[allow(clippy::extra_unused_lifetimes)]
            #vis fn reset(self) -> ::core::option::Option<#ty>
            where
                for<'__static_call> <Self as #sc::StaticCall>::Ret: #sc::Zeroable,
            {
                #key.reset()
            }

            /// [`reset`](Self::reset) that returns the reason as an `Error`
            /// instead of panicking. See `Key::try_reset`.
            #hidden
            #[allow(clippy::extra_unused_lifetimes)]
            #vis fn try_reset(self) -> ::core::result::Result<::core::option::Option<#ty>, #sc::Error>
            where
                for<'__static_call> <Self as #sc::StaticCall>::Ret: #sc::Zeroable,
            {
                #key.try_reset()
            }
        }
    };

    let shared = marker_items(&c, vis, &the_static, &type_doc, key);
    Ok(quote! {
        #shared

        #(#cfgs)* #(#lints)*
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        static #key: #sc::Key<#ty, #ret_static> =
            // SAFETY: `#ty` is an `extern "C"` function pointer type returning
            // `#ret_static` up to lifetimes (checked above); the target is one
            // of them, or null with a zeroable return (checked here). The
            // user's target expression stays outside the `unsafe`.
            {
                #zero_check
                unsafe {
                    #sc::Key::__new(#init, #no_target, #sc::backend! { inline { Some(#holder) } portable { None } })
                }
            };

        #(#cfgs)*
        #sc::backend! {
            inline { #sc::trampoline!(#key, #holder, target); }
            portable {}
        }

        #(#cfgs)* #(#lints)*
        impl #marker {
            #[doc = #doc_call]
            #[inline(always)]
            #[allow(
                clippy::too_many_arguments,
                clippy::missing_safety_doc,
                clippy::inline_asm_x86_intel_syntax,
                clippy::inline_asm_x86_att_syntax
            )]
            #vis #unsafety fn call #lifetimes (self, #(#user_names: #arg_tys),*) #output {
                let (#(#arg_names,)*) = (#(#user_names,)*);
                #prelude
                #sc::backend! {
                    inline { #inline_body }
                    portable { #portable_body }
                }
            }

            #reset
        }

        #(#cfgs)* #(#lints)*
        impl ::core::ops::Deref for #marker {
            type Target = #sc::Key<#ty, #ret_static>;
            #[inline(always)]
            fn deref(&self) -> &Self::Target {
                &#key
            }
        }


        #(#cfgs)* #(#lints)*
        impl #sc::StaticCall for #marker {
            type Fn = #ty;
            type Ret = #ret_static;
            #[inline(always)]
            fn key(&self) -> &'static #sc::Key<#ty, #ret_static> {
                &#key
            }
        }
    })
}

/// Whether a return type may have a value with no target (`()`, or a type
/// that may be `Zeroable`): `reset` is declared only then. References and
/// floats never are; a named type may be (the `Zeroable` bound decides).
fn may_be_zeroable(ret: &ReturnType) -> bool {
    fn ty_may(t: &Type) -> bool {
        match t {
            Type::Reference(_) | Type::Slice(_) | Type::Array(_) | Type::BareFn(_) | Type::TraitObject(_) => false,
            Type::Tuple(t) => t.elems.is_empty(),
            Type::Paren(p) => ty_may(&p.elem),
            Type::Group(g) => ty_may(&g.elem),
            Type::Path(p) => !(p.qself.is_none() && is_float_path(&p.path)),
            _ => true,
        }
    }
    match ret {
        ReturnType::Default => true,
        ReturnType::Type(_, t) => ty_may(t),
    }
}

/// How a value of a key of a Rust `fn` type travels between a site and the
/// target's shim (see the crate's `rust_fn` module).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Travel {
    /// One integer register (`IntegerRegister`: integers, `bool`, `char`).
    Int,
    /// Two integer registers: a reference or raw pointer, thin or not.
    Ptr,
    /// A floating-point register (`f32`, `f64`).
    Float,
    /// Moved into the caller's frame, passed as a pointer (every other type,
    /// and whatever does not fit in the registers).
    Mem,
}

fn travel(ty: &Type) -> Travel {
    match ty {
        Type::Paren(p) => travel(&p.elem),
        Type::Group(g) => travel(&g.elem),
        Type::Reference(_) | Type::Ptr(_) => Travel::Ptr,
        Type::Path(p) if p.qself.is_none() && is_float_path(&p.path) => Travel::Float,
        Type::Path(p)
            if p.qself.is_none()
                && p.path.leading_colon.is_none()
                && p.path.segments.len() == 1
                && p.path.segments[0].arguments.is_none() =>
        {
            let id = p.path.segments[0].ident.to_string();
            const INTS: [&str; 12] =
                ["u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize", "bool", "char"];
            if INTS.contains(&id.as_str()) {
                Travel::Int
            } else {
                Travel::Mem
            }
        }
        _ => Travel::Mem,
    }
}

/// `ty` with the lifetimes of the key type's `for<..>` binder made `'_`, for
/// types written inside a body (where those names are not in scope).
fn elide(ty: &Type, binder: &[syn::Lifetime]) -> Type {
    struct Elide<'a>(&'a [syn::Lifetime]);
    impl VisitMut for Elide<'_> {
        fn visit_lifetime_mut(&mut self, l: &mut syn::Lifetime) {
            if self.0.iter().any(|b| b.ident == l.ident) {
                *l = syn::Lifetime::new("'_", l.span());
            }
        }
    }
    let mut t = ty.clone();
    Elide(binder).visit_type_mut(&mut t);
    t
}

fn expand_rust(args: &Args, decl: &Decl, f: &TypeBareFn, sc: &TokenStream) -> syn::Result<TokenStream> {
    let Decl { vis, ident, ty, target, .. } = decl;
    let Some(target) = target else {
        return Err(syn::Error::new_spanned(
            ident,
            "a key of a Rust `fn` type needs a target: write `static NAME: fn(..) -> R = target;` (a fn item or \
             a non-capturing closure); keys without a target, and `reset`, are for `extern \"C\"` keys",
        ));
    };
    let c = common(decl, f);
    let Common { marker, key, holder, names: user_names, tys, sig, .. } = &c;
    let names = &inner_names(user_names.len());
    let Attrs { cfgs, lints_elsewhere: lints, .. } = &c.attrs;
    let binder: Vec<syn::Lifetime> = f
        .lifetimes
        .as_ref()
        .map(|b| {
            b.lifetimes
                .iter()
                .filter_map(|p| match p {
                    syn::GenericParam::Lifetime(l) => Some(l.lifetime.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let lifetimes = f.lifetimes.as_ref().map(|b| {
        let l = &b.lifetimes;
        quote!(<#l>)
    });
    let for_binder = f.lifetimes.as_ref().map(|b| quote!(#b));
    let output = &f.output;
    let unsafety = &f.unsafety;
    let ret: Option<Type> = match &f.output {
        ReturnType::Type(_, t) if !is_unit(&f.output) => Some((**t).clone()),
        _ => None,
    };
    // `Send + Sync`: every thread may call the target (a closure that
    // captured a zero-sized `!Send` value is refused).
    let bound = quote!(#for_binder ::core::ops::Fn(#(#tys),*) #output);
    let bound = quote!(::core::marker::Send + ::core::marker::Sync + #bound);
    let tt = fresh_type_name("StaticCallTarget", &quote!(#ty));

    // Where each argument travels. The integer register after the
    // arguments' carries the frame pointer (so that the arguments stand
    // where a Rust callee of the same signature usually wants them, and a
    // shim that tail-jumps moves nothing): one is kept for it.
    let (mut ints, mut floats, mut spills) = (0usize, 0usize, 0usize);
    struct Arg {
        name: Ident,
        ty: Type,
        body_ty: Type,
        how: Travel,
        regs: Vec<usize>,
    }
    let mut plan = Vec::new();
    for (name, t) in names.iter().zip(tys) {
        let mut how = travel(t);
        let need = match how {
            Travel::Int => 1,
            Travel::Ptr => 2,
            _ => 0,
        };
        let mut regs = Vec::new();
        if need > 0 {
            if ints + need < INT_REGS.len() {
                regs = (ints..ints + need).collect();
                ints += need;
            } else {
                how = Travel::Mem;
            }
        }
        if how == Travel::Float {
            if floats < FLOAT_REGS.len() {
                regs = vec![floats];
                floats += 1;
            } else {
                how = Travel::Mem;
            }
        }
        if how == Travel::Mem {
            regs = vec![spills];
            spills += 1;
        }
        plan.push(Arg { name: name.clone(), ty: t.clone(), body_ty: elide(t, &binder), how, regs });
    }
    let ret_how = ret.as_ref().map(travel);
    let ret_body = ret.as_ref().map(|t| elide(t, &binder));
    let ret_mem_call = match (&ret, ret_how) {
        (Some(t), Some(Travel::Mem)) => quote!(#t),
        _ => quote!(()),
    };
    let ret_mem_body = match (&ret_body, ret_how) {
        (Some(t), Some(Travel::Mem)) => quote!(#t),
        _ => quote!(()),
    };

    // The shim's C signature: the frame, the integer registers, the
    // floating-point ones; its result.
    let int_params: Vec<Ident> = (0..ints).map(|i| format_ident!("__i{}", i)).collect();
    let float_params: Vec<(Ident, Type)> = plan
        .iter()
        .filter(|a| a.how == Travel::Float)
        .map(|a| (format_ident!("__f{}", a.regs[0]), a.body_ty.clone()))
        .collect();
    let float_names: Vec<&Ident> = float_params.iter().map(|(n, _)| n).collect();
    let float_tys: Vec<&Type> = float_params.iter().map(|(_, t)| t).collect();
    let shim_ret = match (ret_how, &ret_body) {
        (Some(Travel::Int), _) => quote!(u64),
        (Some(Travel::Ptr), _) => quote!(#sc::Pair),
        (Some(Travel::Float), Some(t)) => quote!(#t),
        _ => quote!(()),
    };
    let int_u64 = int_params.iter().map(|_| quote!(u64));
    let shim_ty = quote!(unsafe extern "C" fn(#(#int_u64,)* *mut u8, #(#float_tys),*) -> #shim_ret);

    // The caller: each value to its register or into the frame.
    let mut marshal = Vec::new();
    let (fp_x86, fp_arm) = INT_REGS[ints];
    let mut x86 = vec![quote!(in(#fp_x86) __fp,)];
    let mut arm = vec![quote!(in(#fp_arm) __fp,)];
    let mut call_ints: Vec<TokenStream> = Vec::new();
    let mut call_floats: Vec<TokenStream> = Vec::new();
    // The shim: each value back from where it travelled.
    let mut unmarshal = Vec::new();
    for a in &plan {
        let (n, t, bt) = (&a.name, &a.ty, &a.body_ty);
        match a.how {
            Travel::Int => {
                let v = format_ident!("__i{}", a.regs[0]);
                let (r, ar) = INT_REGS[a.regs[0]];
                marshal.push(quote!(let #v: u64 = <#t as #sc::IntegerRegister>::into_register(#n);));
                x86.push(quote!(in(#r) #v,));
                arm.push(quote!(in(#ar) #v,));
                call_ints.push(quote!(#v));
                unmarshal.push(quote!(
                    // SAFETY: the site passed `into_register` of a `#t`.
                    let #n = unsafe { <#bt as #sc::IntegerRegister>::from_register(#v) };
                ));
            }
            Travel::Ptr => {
                let (v0, v1) = (format_ident!("__i{}", a.regs[0]), format_ident!("__i{}", a.regs[1]));
                let p = format_ident!("__p{}", a.regs[0]);
                let ((r0, ar0), (r1, ar1)) = (INT_REGS[a.regs[0]], INT_REGS[a.regs[1]]);
                marshal.push(quote!(
                    // SAFETY: `#t` is a reference or raw pointer type; the
                    // shim reads it back as this type.
                    let #p = unsafe { #sc::to_pair::<#t>(#n) };
                    let (#v0, #v1) = (#p.0, #p.1);
                ));
                x86.push(quote!(in(#r0) #v0, in(#r1) #v1,));
                arm.push(quote!(in(#ar0) #v0, in(#ar1) #v1,));
                call_ints.push(quote!(#v0));
                call_ints.push(quote!(#v1));
                unmarshal.push(quote!(
                    // SAFETY: the site passed `to_pair` of this type.
                    let #n: #bt = unsafe { #sc::from_pair::<#bt>(#sc::Pair(#v0, #v1)) };
                ));
            }
            Travel::Float => {
                let v = format_ident!("__f{}", a.regs[0]);
                let (r, ar) = FLOAT_REGS[a.regs[0]];
                // The type, not its spelling, decides: `type f64 = u64` is
                // refused here rather than sent in the wrong register.
                let check = quote_spanned!(t.span()=> #sc::assert_float::<#t>());
                marshal.push(quote!(#check; let #v: #t = #n;));
                x86.push(quote!(in(#r) #v,));
                arm.push(quote!(in(#ar) #v,));
                call_floats.push(quote!(#v));
                unmarshal.push(quote!(let #n: #bt = #v;));
            }
            Travel::Mem => {
                let m = format_ident!("__m{}", a.regs[0]);
                let j = a.regs[0];
                marshal.push(quote!(
                    let #m = ::core::mem::ManuallyDrop::new(#n);
                    __frame.spill[#j] = (&raw const #m).cast::<u8>().cast_mut();
                ));
                unmarshal.push(quote!(
                    // SAFETY: the site moved a `#t` there and does not
                    // drop it; it is read once.
                    let #n: #bt = unsafe { ::core::ptr::read((*__frame).spill[#j].cast::<#bt>()) };
                ));
            }
        }
    }
    let (ret_decl, ret_value, shim_ok, shim_err) = match (ret_how, &ret, &ret_body) {
        (None, _, _) => (quote!(), quote!(), quote!(let _ = __r;), quote!()),
        (Some(Travel::Int), Some(t), Some(bt)) => {
            let (r, ar) = INT_RET;
            x86.push(quote!(lateout(#r) __r0,));
            arm.push(quote!(lateout(#ar) __r0,));
            (
                quote!(let __r0: u64;),
                quote!(
                    // SAFETY: the shim returned `into_register` of a `#t`.
                    unsafe { <#t as #sc::IntegerRegister>::from_register(__r0) }
                ),
                quote!(<#bt as #sc::IntegerRegister>::into_register(__r)),
                quote!(0),
            )
        }
        (Some(Travel::Ptr), Some(t), Some(bt)) => {
            x86.push(quote!(lateout("rax") __r0, lateout("rdx") __r1,));
            arm.push(quote!(lateout("x0") __r0, lateout("x1") __r1,));
            (
                quote!(let (__r0, __r1): (u64, u64);),
                quote!(
                    // SAFETY: the shim returned `to_pair` of a `#t`.
                    unsafe { #sc::from_pair::<#t>(#sc::Pair(__r0, __r1)) }
                ),
                quote!(
                    // SAFETY: `#bt` is a reference or raw pointer type; the
                    // site reads it back as this type.
                    unsafe { #sc::to_pair::<#bt>(__r) }
                ),
                quote!(#sc::Pair(0, 0)),
            )
        }
        (Some(Travel::Float), Some(t), _) => {
            let check = quote_spanned!(t.span()=> #sc::assert_float::<#t>());
            marshal.push(quote!(#check;));
            let (r, ar) = FLOAT_RET;
            x86.push(quote!(lateout(#r) __r0,));
            arm.push(quote!(lateout(#ar) __r0,));
            (quote!(let __r0: #t;), quote!(__r0), quote!(__r), quote!(0.0))
        }
        _ => (
            quote!(),
            quote!(
                // SAFETY: the target returned (it did not panic: `rethrow`
                // resumed that), so the shim wrote the result.
                unsafe { __frame.ret.assume_init() }
            ),
            quote!(unsafe { (*__frame).ret.write(__r) };),
            quote!(),
        ),
    };
    let portable_ret = match ret_how {
        Some(Travel::Ptr) => quote!((__r0, __r1) = (__r.0, __r.1);),
        Some(Travel::Int) | Some(Travel::Float) => quote!(__r0 = __r;),
        _ => quote!(let _ = __r;),
    };
    let call_args = quote!(#(#call_ints,)* __fp, #(#call_floats),*);

    // Through a pointer: the portable backend (the key's target), or an
    // `out_of_line` key (its trampoline, which only the inline backend
    // emits).
    let through = |site_call: TokenStream| {
        quote!({
            // SAFETY: the key's code is a shim of exactly this C signature (the
            // key's constructor and `__try_update` contracts), and the
            // trampoline jumps to it.
            let __s = unsafe { ::core::mem::transmute::<*mut (), #shim_ty>(#site_call) };
            // SAFETY: the arguments are what the shim reads.
            let __r = unsafe { __s(#call_args) };
            #portable_ret
        })
    };
    let through_pointer = through(quote!(#key.__raw().load()));
    let inline_call = if args.out_of_line {
        through(quote!(#sc::trampoline_addr!(#key) as *mut ()))
    } else {
        quote!(
            // SAFETY: the site calls the key's trampoline or (patched) the
            // current target's shim, an `extern "C"` function of exactly
            // this signature: the frame pointer and each value bound to its
            // register, all caller-saved registers clobbered, the stack left
            // usable.
            unsafe {
                #sc::site!(#key; x86_64 { #(#x86)* } aarch64 { #(#arm)* });
            }
        )
    };
    let call_body = |how: &TokenStream| {
        quote!({
            let mut __frame = #sc::Frame::<#ret_mem_call, #spills>::new();
            #(#marshal)*
            let __fp: *mut u8 = (&raw mut __frame).cast::<u8>();
            #ret_decl
            #how
            __frame.rethrow();
            #ret_value
        })
    };
    let inline_body = call_body(&inline_call);
    let portable_body = call_body(&through_pointer);

    let the_static = key_static(decl, &c, "");
    let type_doc = format!(
        "The type of the static call key [`{ident}`](static@{ident}), whose target type is `{sig}`: \
         `call` is a call site, `update`/`try_update` retarget every call site to a fn item or a \
         non-capturing closure, `get` returns the target as a `{sig}`, `sites` lists the call sites."
    );
    let size_msg = format!(
        "a target of the static call key `{ident}` must be a fn item or a non-capturing closure (a zero-sized \
         type): a closure that captures has state that no call site could pass; a function pointer value \
         (such as what `{ident}.get()` or `{ident}.update(..)` returned) has no type of its own that a call \
         site could call directly: pass the fn item itself, or a non-capturing closure that calls the \
         pointer through a static of yours (an indirect call)"
    );
    let zst_check = quote!(const { ::core::assert!(::core::mem::size_of::<#tt>() == 0, #size_msg) };);

    let shared = marker_items(&c, vis, &the_static, &type_doc, key);
    Ok(quote! {
        #shared

        #(#cfgs)* #(#lints)*
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        static #key: #sc::RustKey<#ty> =
            // SAFETY: `__entry` makes the shim of this key's signature for
            // the target's type, and a `#ty` that calls the same target.
            // (The user's target expression stays outside the `unsafe`.)
            {
                const __TARGET: #sc::Target = #marker::__entry(#target);
                unsafe { #sc::RustKey::__new(__TARGET, #sc::backend! { inline { Some(#holder) } portable { None } }) }
            };

        #(#cfgs)*
        #sc::backend! {
            inline { #sc::trampoline!(#key, #holder, target); }
            portable {}
        }

        #(#cfgs)* #(#lints)*
        impl #marker {
            /// Calls the current target: an inline call site. A panic in the
            /// target unwinds from here.
            #[inline(always)]
            #[allow(
                clippy::too_many_arguments,
                clippy::missing_safety_doc,
                clippy::inline_asm_x86_intel_syntax,
                clippy::inline_asm_x86_att_syntax
            )]
            #vis #unsafety fn call #lifetimes (self, #(#user_names: #tys),*) #output {
                let (#(#names,)*) = (#(#user_names,)*);
                #sc::backend! {
                    inline { #inline_body }
                    portable { #portable_body }
                }
            }

            /// Makes `f` (a fn item, a generic fn's instantiation, an
            /// associated fn, or a non-capturing closure) the target of every
            /// call site of this key, and returns the previous target. The
            /// guarantees and panics are `Key::update`'s.
            #[track_caller]
            #vis fn update<#tt>(self, f: #tt) -> ::core::option::Option<#ty>
            where
                #tt: ::core::marker::Copy + 'static + #bound,
            {
                match self.try_update(f) {
                    ::core::result::Result::Ok(old) => old,
                    ::core::result::Result::Err(e) => ::core::panic!("{}", e),
                }
            }

            /// [`update`](Self::update) that returns the reason as an `Error`
            /// instead of panicking. On error nothing changed.
            #vis fn try_update<#tt>(self, f: #tt) -> ::core::result::Result<::core::option::Option<#ty>, #sc::Error>
            where
                #tt: ::core::marker::Copy + 'static + #bound,
            {
                // SAFETY: as for the key's constructor.
                unsafe { #key.__try_update(Self::__entry(f)) }
            }

            /// The current target, as a plain function pointer that calls
            /// it.
            #vis fn get(self) -> ::core::option::Option<#ty> {
                #key.get()
            }

            /// The call sites of this key, in address order, with the
            /// instruction each holds now.
            #vis fn sites(self) -> #sc::Vec<#sc::Site> {
                #key.sites()
            }

            /// The target `f` as the key stores it: its shim, and a function
            /// pointer that calls it.
            #[doc(hidden)]
            #[allow(clippy::let_underscore_untyped)]
            const fn __entry<#tt>(f: #tt) -> #sc::Target
            where
                #tt: ::core::marker::Copy + 'static + #bound,
            {
                #zst_check
                let _ = f;
                #[allow(unused_unsafe, clippy::redundant_closure_call)]
                let __shown: #ty = |#(#names),*| {
                    // SAFETY: `f` was a value of this zero-sized type.
                    (unsafe { #sc::conjure::<#tt>() })(#(#names),*)
                };
                #sc::Target::shim(Self::__shim::<#tt> as #shim_ty as *mut (), __shown as *mut ())
            }

            /// The target's shim: what the call sites call, with the C
            /// calling convention.
            #[doc(hidden)]
            #[allow(clippy::too_many_arguments, unused_unsafe)]
            unsafe extern "C" fn __shim<#tt>(
                #(#int_params: u64,)*
                __frame: *mut u8,
                #(#float_names: #float_tys),*
            ) -> #shim_ret
            where
                #tt: ::core::marker::Copy + 'static + #bound,
            {
                let __frame = __frame.cast::<#sc::Frame<#ret_mem_body, #spills>>();
                #(#unmarshal)*
                // SAFETY: `#tt` is zero-sized (`__entry` checked) and was
                // given to `__entry`.
                let __f: #tt = unsafe { #sc::conjure::<#tt>() };
                match #sc::catch(move || __f(#(#names),*)) {
                    ::core::result::Result::Ok(__r) => { #shim_ok }
                    ::core::result::Result::Err(__p) => {
                        // SAFETY: the frame is the caller's, alive for the
                        // call; the caller resumes the panic.
                        unsafe { (*__frame).caught(__p) };
                        #shim_err
                    }
                }
            }
        }

        #(#cfgs)* #(#lints)*
        // SAFETY: `__entry` makes a shim of this key's signature for the
        // target's type, and a function pointer of the key's type.
        unsafe impl<#tt> #sc::Retarget<#tt> for #marker
        where
            #tt: ::core::marker::Copy + 'static + #bound,
        {
            fn __target(&self, f: #tt) -> (&'static #sc::RawKey, #sc::Target) {
                (#key.__raw(), Self::__entry(f))
            }
        }

    })
}

/// A type's tokens as a person would write them: `extern "C" fn(u64) -> u64`.
fn tidy(tokens: &str) -> String {
    let mut s = tokens.to_string();
    for (from, to) in
        [(" (", "("), ("( ", "("), (" )", ")"), (" ,", ","), ("& ", "&"), ("* ", "*"), (" :: ", "::"), (":: ", "::")]
    {
        s = s.replace(from, to);
    }
    s
}

/// Whether the key's type is a Rust `fn` (true) or `extern "C"` (false);
/// an error for any other ABI.
fn check_abi(f: &TypeBareFn, out_of_line: bool) -> syn::Result<bool> {
    let name = f.abi.as_ref().map(|a| a.name.as_ref().map_or("C".to_string(), |n| n.value()));
    let ok = match name.as_deref() {
        None | Some("Rust") => return Ok(true),
        Some("C") => true,
        Some("C-unwind") => out_of_line,
        _ => false,
    };
    if ok {
        return Ok(false);
    }
    let tokens = match &f.abi {
        Some(abi) => quote!(#abi),
        None => {
            let fn_token = &f.fn_token;
            quote!(#fn_token)
        }
    };
    let msg = match name.as_deref() {
        Some("C-unwind") => "`extern \"C-unwind\"` targets need #[static_call(out_of_line)]: a panic cannot \
                             unwind through an inline call site's asm, but it can through the trampoline; or make \
                             the target `extern \"C\"` (a panic in it then aborts)"
            .to_string(),
        Some(other) => format!(
            "a static call key's type is a Rust `fn(..)` or an `extern \"C\" fn(..)`, not `extern \"{other}\"`: \
             write one of those"
        ),
        None => unreachable!("a Rust fn is accepted above"),
    };
    Err(syn::Error::new_spanned(tokens, msg))
}

/// An inline call: the conversions of its integer-class values (bound outside
/// the backend switch, so that an unsupported type is the same error with
/// either backend), and the asm site with each argument bound to its
/// register, for each architecture (the crate's `site!` picks its own list:
/// the target is the crate's decision, not the macro's).
struct InlineSite {
    prelude: TokenStream,
    body: TokenStream,
}

fn inline_site(
    f: &TypeBareFn,
    key: &Ident,
    names: &[Ident],
    tys: &[&Type],
    unit: bool,
    sc: &TokenStream,
) -> syn::Result<InlineSite> {
    let mut prelude = Vec::new();
    let (mut x86, mut arm) = (Vec::new(), Vec::new());
    let (mut ints, mut floats) = (0, 0);
    for (i, (name, ty)) in names.iter().zip(tys).enumerate() {
        match classify(ty) {
            Class::Integer => {
                let Some((reg, areg)) = INT_REGS.get(ints) else {
                    return Err(syn::Error::new_spanned(
                        ty,
                        format!(
                            "an inline static call site passes at most {} integer-class arguments (integers, \
                             `bool`, `char`, pointers, references) in registers, and this is number {}: pass a \
                             reference to a struct of the arguments instead, or declare the key \
                             #[static_call(out_of_line)]",
                            INT_REGS.len(),
                            ints + 1
                        ),
                    ));
                };
                ints += 1;
                let conv = format_ident!("__into{}", i);
                // The check and the conversion carry the type's span, so
                // that an unsupported type is one error, at the type; the
                // binding keeps the macro's own (hygiene).
                let check = quote_spanned!(ty.span()=> #sc::assert_integer::<#ty>());
                let into = quote_spanned!(ty.span()=> <#ty as #sc::IntegerRegister>::into_register);
                prelude.push(quote!(#check; let #conv = #into;));
                x86.push(quote!(in(#reg) #conv(#name),));
                arm.push(quote!(in(#areg) #conv(#name),));
            }
            Class::Float => {
                let Some((reg, areg)) = FLOAT_REGS.get(floats) else {
                    return Err(syn::Error::new_spanned(
                        ty,
                        format!(
                            "an inline static call site passes at most {} floating-point arguments in \
                             registers, and this is number {}: pass a reference to a struct of the arguments \
                             instead, or declare the key #[static_call(out_of_line)]",
                            FLOAT_REGS.len(),
                            floats + 1
                        ),
                    ));
                };
                floats += 1;
                // The type, not its spelling, decides (`type f64 = u64`).
                let check = quote_spanned!(ty.span()=> #sc::assert_float::<#ty>());
                prelude.push(quote!(#check;));
                x86.push(quote!(in(#reg) #name,));
                arm.push(quote!(in(#areg) #name,));
            }
        }
    }
    let ret = match (&f.output, unit) {
        (_, true) => None,
        (ReturnType::Type(_, t), false) => Some((t, classify(t))),
        (ReturnType::Default, false) => unreachable!("no return type is unit"),
    };
    let (decl, result) = match ret {
        None => (quote!(), quote!()),
        Some((t, Class::Float)) => {
            let check = quote_spanned!(t.span()=> #sc::assert_float::<#t>());
            prelude.push(quote!(#check;));
            let (r, ar) = FLOAT_RET;
            x86.push(quote!(lateout(#r) __ret,));
            arm.push(quote!(lateout(#ar) __ret,));
            (quote!(let __ret: #t;), quote!(__ret))
        }
        Some((t, Class::Integer)) => {
            let check = quote_spanned!(t.span()=> #sc::assert_integer::<#t>());
            let from = quote_spanned!(t.span()=> <#t as #sc::IntegerRegister>::from_register);
            prelude.push(quote!(#check; let __from_ret = #from;));
            let (r, ar) = INT_RET;
            x86.push(quote!(lateout(#r) __ret,));
            arm.push(quote!(lateout(#ar) __ret,));
            (
                quote!(let __ret: u64;),
                quote!(
                    // SAFETY: the return register holds what the target,
                    // of this return type, returned (or zero with no
                    // target, for a `Zeroable` type).
                    unsafe { __from_ret(__ret) }
                ),
            )
        }
    };
    let body = quote!({
        #decl
        // SAFETY: the site calls the key's trampoline, or (patched) its
        // target, an `extern "C"` function of exactly this signature: each
        // argument is bound to its register (System V on x86-64, AAPCS64 on
        // aarch64), all caller-saved registers are clobbered, and the stack
        // is left usable (no `nostack`), as a call needs.
        unsafe {
            #sc::site!(#key; x86_64 { #(#x86)* } aarch64 { #(#arm)* });
        }
        #result
    });
    Ok(InlineSite { prelude: quote!(#(#prelude)*), body })
}

// ---------------------------------------------------------------- static branches

/// Declares a static branch: a `bool` that every site tests for free.
///
/// ```ignore
/// #[static_branch]
/// static TRACE: bool = false;          // the built-in value
/// #[static_branch]
/// pub static FAST: bool = true;
/// if TRACE.unlikely() { /* out of line */ }
/// if FAST.likely() { /* inline */ } else { /* out of line */ }
/// TRACE.set(true);
/// ```
///
/// `#[static_branch(crate = path::to::static_call)]` serves a crate that
/// re-exports this macro. See the `static_call` crate for the rules.
#[proc_macro_attribute]
pub fn static_branch(args: proc_macro::TokenStream, input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    match expand_branch(TokenStream::from(args), TokenStream::from(input)) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

const BRANCH_FORM: &str = "write `static NAME: bool = false;` (or `= true`, the built-in value)";

struct BranchDecl {
    attrs: Vec<Attribute>,
    vis: Visibility,
    ident: Ident,
    value: Expr,
}

impl Parse for BranchDecl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        if input.peek(Token![const]) {
            return Err(input.error(format!("#[static_branch] goes on a `static`, not a `const`: {BRANCH_FORM}")));
        }
        if !input.peek(Token![static]) {
            return Err(input.error(format!("#[static_branch] goes on a `static` item: {BRANCH_FORM}")));
        }
        input.parse::<Token![static]>()?;
        if input.peek(Token![mut]) {
            let m: Token![mut] = input.parse()?;
            return Err(syn::Error::new(
                m.span,
                "a static branch cannot be `static mut`: write `static NAME: bool = false;` and flip it with \
                 `NAME.set(true)`, which is safe and patches every site",
            ));
        }
        let ident: Ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let ty: Type = input.parse()?;
        let is_bool = matches!(&ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("bool"));
        if !is_bool {
            return Err(syn::Error::new_spanned(
                &ty,
                "a static branch is a `bool`: write `static NAME: bool = false;` (for a function pointer, use \
                 `#[static_call]`)",
            ));
        }
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(
                ident.span(),
                format!("a static branch needs its built-in value: {BRANCH_FORM}"),
            ));
        }
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        input.parse::<Token![;]>()?;
        Ok(BranchDecl { attrs, vis, ident, value })
    }
}

fn parse_branch_args(args: TokenStream) -> syn::Result<Option<syn::Path>> {
    let mut krate = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            let value = meta.value()?;
            krate =
                Some(if value.peek(syn::LitStr) { value.parse::<syn::LitStr>()?.parse()? } else { value.parse()? });
            Ok(())
        } else {
            Err(meta.error(
                "unknown argument; the valid forms are `#[static_branch]` and `#[static_branch(crate = \
                 path::to::static_call)]` (for a crate that re-exports this macro)",
            ))
        }
    });
    syn::parse::Parser::parse2(parser, args)?;
    Ok(krate)
}

fn expand_branch(args: TokenStream, input: TokenStream) -> syn::Result<TokenStream> {
    let krate = parse_branch_args(args)?.unwrap_or_else(|| syn::parse_quote!(::static_call));
    let sc = quote!(#krate::__private);
    let decl: BranchDecl = syn::parse2(input)?;
    let BranchDecl { vis, ident, value, .. } = &decl;
    let Attrs { docs, cfgs, lints, lints_elsewhere, rest } = sort_attrs(&decl.attrs);
    let marker = ident;
    let key = format_ident!("__STATIC_BRANCH_KEY_{}", ident);
    let name = ident.to_string();
    let ours = if docs.is_empty() {
        quote!()
    } else {
        let text = format!(
            "Static branch `{ident}`: `{ident}.likely()` / `{ident}.unlikely()` test it for free (each is a site \
             patched to a `nop` or a jump), `{ident}.set(v)` flips every site, `{ident}.get()` reads it."
        );
        quote!(#[doc = ""] #[doc = #text])
    };
    let type_doc = format!(
        "The type of the static branch [`{ident}`](static@{ident}). `likely` and `unlikely` are sites; \
         through `Deref` it is a `static_call::BranchKey`: `set`, `try_set`, `get`, `sites`."
    );
    Ok(quote! {
        #(#cfgs)* #(#lints)* #(#docs)* #ours #(#rest)*
        #vis static #ident: #marker = #marker { __static_call: () };

        #(#cfgs)* #(#lints_elsewhere)*
        #[doc = #type_doc]
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy)]
        #vis struct #marker {
            __static_call: (),
        }

        #(#cfgs)* #(#lints_elsewhere)*
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        static #key: #sc::BranchKey = #sc::BranchKey::__new({
            const __VALUE: bool = #value;
            __VALUE
        });

        #(#cfgs)* #(#lints_elsewhere)*
        impl #marker {
            /// A site that expects the branch to be `false`: returns its
            /// value, with the code for `true` out of line (after
            /// patching, a `nop` while `false`, a jump while `true`).
            #[inline(always)]
            #[allow(clippy::inline_asm_x86_intel_syntax, clippy::inline_asm_x86_att_syntax)]
            #vis fn unlikely(self) -> bool {
                #sc::backend! {
                    inline {
                        // SAFETY: the template only reads the key's slot
                        // (a static of this module) and jumps to its own
                        // test, back, or to the label; it writes no
                        // register (aarch64: saves and restores `x16` on
                        // the stack) and leaves the stack as it found it.
                        unsafe { #sc::branch_site!(#key, unlikely, { return true; }) }
                        false
                    }
                    portable { #sc::branch_unlikely(#key.__relaxed()) }
                }
            }

            /// A site that expects the branch to be `true`: returns its
            /// value, with the code for `true` inline (after patching, a
            /// `nop` while `true`, a jump while `false`).
            #[inline(always)]
            #[allow(clippy::inline_asm_x86_intel_syntax, clippy::inline_asm_x86_att_syntax)]
            #vis fn likely(self) -> bool {
                #sc::backend! {
                    inline {
                        // SAFETY: as in `unlikely`.
                        unsafe { #sc::branch_site!(#key, likely, { return false; }) }
                        true
                    }
                    portable { #sc::branch_likely(#key.__relaxed()) }
                }
            }
        }

        #(#cfgs)* #(#lints_elsewhere)*
        impl ::core::ops::Deref for #marker {
            type Target = #sc::BranchKey;
            #[inline(always)]
            fn deref(&self) -> &Self::Target {
                &#key
            }
        }

        #(#cfgs)* #(#lints_elsewhere)*
        impl ::core::fmt::Debug for #marker {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(#name)
                    .field("value", &#key.get())
                    .field("sites", &#key.sites().len())
                    .finish()
            }
        }
    })
}
