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

const FORMS: &str =
    "expected `static NAME: extern \"C\" fn(..) -> R = target;` or `static NAME: extern \"C\" fn(..);` \
                     (no target; return type `()` or zeroable)";

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
}

fn parse_args(args: TokenStream) -> syn::Result<Args> {
    let mut out = Args::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("out_of_line") {
            out.out_of_line = true;
            Ok(())
        } else {
            Err(meta.error("unknown argument; the valid forms are `#[static_call]` and `#[static_call(out_of_line)]`"))
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

fn expand(args: TokenStream, input: TokenStream) -> syn::Result<TokenStream> {
    let args = parse_args(args)?;
    let decl: Decl = syn::parse2(input)?;
    let Decl { attrs, vis, ident, ty, target } = &decl;

    let Type::BareFn(f) = ty else {
        let alias = if matches!(ty, Type::Path(_)) {
            " here, spelled out: the macro reads the signature from it, so it cannot see through a type alias"
        } else {
            ""
        };
        return Err(syn::Error::new_spanned(
            ty,
            format!(
                "a static call key's type is a function pointer: write `extern \"C\" fn(..) -> R` (or `unsafe \
                 extern \"C\" fn(..) -> R`){alias}"
            ),
        ));
    };
    check_abi(f, args.out_of_line)?;
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

    // The static's own type has the static's name (types and values live in
    // different namespaces; a braced struct defines no constructor in the
    // value namespace): errors and rustdoc then say `HASH::call`.
    let marker = ident.clone();
    let key = format_ident!("__STATIC_CALL_KEY_{}", ident);
    let holder = format_ident!("__static_call_trampoline_{}", ident);
    let sc = quote!(::static_call::__private);
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
    let arg_names: Vec<Ident> = (0..f.inputs.len()).map(|i| format_ident!("__arg{}", i)).collect();
    let arg_tys: Vec<&Type> = f.inputs.iter().map(|a| &a.ty).collect();

    // The key: its slot starts at the default target, or (null here) the
    // no-target stub `Key::__new` puts there.
    let no_target = if unit { quote!(#sc::NoTarget::Nop) } else { quote!(#sc::NoTarget::Zero) };
    let (init, zero_check) = match target {
        Some(t) => (
            quote!({
                const __TARGET: #ty = #t;
                __TARGET as *mut ()
            }),
            quote!(),
        ),
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
        let site = inline_site(f, &key, &arg_names, &arg_tys, unit)?;
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

    let sig = tidy(&quote!(#ty).to_string());
    let static_doc = format!(
        "Static call key: `{sig}`{}. `{ident}.call(..)` calls its target{}; \
         `{ident}.update(f)` retargets every call site, `{ident}.get()` reads the target \
         (see the type `{ident}`, which dereferences to `static_call::Key`).",
        match target {
            Some(_) => String::new(),
            None => ", with no target until updated".to_string(),
        },
        if args.out_of_line { " through its trampoline" } else { " (each call is a site patched in place)" },
    );
    let type_doc = format!(
        "The type of the static call key [`{ident}`](static@{ident}), whose target type is `{sig}`. \
         `call` is a call site; through `Deref` it is a `static_call::Key`: `update`, \
         `try_update`, `get`, `sites`, and `reset` where the return type allows no target."
    );
    let doc_call = format!(
        "Calls the current target of [`{ident}`](static@{ident}){}.",
        if args.out_of_line { " through its trampoline" } else { ": an inline call site" }
    );

    Ok(quote! {
        #(#attrs)*
        #[doc = ""]
        #[doc = #static_doc]
        #vis static #ident: #marker = #marker { __static_call: () };

        #[doc = #type_doc]
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy)]
        #vis struct #marker {
            __static_call: (),
        }

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        static #key: #sc::Key<#ty, #ret_static> =
            // SAFETY: `#ty` is an `extern "C"` function pointer type returning
            // `#ret_static` up to lifetimes (checked above); the target is one
            // of them, or null with a zeroable return (checked below).
            unsafe {
                #sc::Key::__new(#init, #no_target, #sc::backend! { inline { Some(#holder) } portable { None } })
            };

        #zero_check

        #sc::backend! {
            inline { #sc::trampoline!(#key, #holder, target); }
            portable {}
        }

        impl #marker {
            #[doc = #doc_call]
            #[inline(always)]
            #[allow(clippy::too_many_arguments, clippy::missing_safety_doc)]
            #vis #unsafety fn call #lifetimes (self, #(#arg_names: #arg_tys),*) #output {
                #prelude
                #sc::backend! {
                    inline { #inline_body }
                    portable { #portable_body }
                }
            }

            /// Removes the target: calls do nothing and return zero. Returns
            /// the previous target. See `Key::reset`.
            ///
            /// Declared here rather than only on `Key` so that a return type
            /// without a zero value is reported at the call, by name.
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
            #[allow(clippy::extra_unused_lifetimes)]
            #vis fn try_reset(self) -> ::core::result::Result<::core::option::Option<#ty>, #sc::Error>
            where
                for<'__static_call> <Self as #sc::StaticCall>::Ret: #sc::Zeroable,
            {
                #key.try_reset()
            }
        }

        impl ::core::ops::Deref for #marker {
            type Target = #sc::Key<#ty, #ret_static>;
            #[inline(always)]
            fn deref(&self) -> &Self::Target {
                &#key
            }
        }

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

fn check_abi(f: &TypeBareFn, out_of_line: bool) -> syn::Result<()> {
    let name = f.abi.as_ref().map(|a| a.name.as_ref().map_or("C".to_string(), |n| n.value()));
    let ok = match name.as_deref() {
        Some("C") => true,
        Some("C-unwind") => out_of_line,
        _ => false,
    };
    if ok {
        return Ok(());
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
            "static call targets must be `extern \"C\" fn`, not `extern \"{other}\"`: the call site passes \
             arguments by the C calling convention; write `extern \"C\" fn(..)`"
        ),
        None => "static call targets must be `extern \"C\" fn`: the call site passes arguments by the C calling \
                 convention, which a Rust `fn` does not promise; write `extern \"C\" fn(..)`"
            .to_string(),
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

fn inline_site(f: &TypeBareFn, key: &Ident, names: &[Ident], tys: &[&Type], unit: bool) -> syn::Result<InlineSite> {
    let sc = quote!(::static_call::__private);
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
