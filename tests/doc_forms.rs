//! The docs name every instruction form this crate writes as its constants
//! encode it. The constants are read from their sources
//! (`src/arch/x86_64/mod.rs`, `src/arch/aarch64/mod.rs`) and decoded:
//! x86-64 with iced-x86, aarch64 by the Arm ARM's encodings of the few
//! instructions the crate writes. Then:
//!
//! 1. each constant's own doc comment names what the constant decodes to
//!    (and the `// +N: ...` notes in `TRAMP_TAIL` what stands at `+N`);
//! 2. every code span in the Markdown files and in the comments of every
//!    `.rs` file that spells a form's instruction (the zero form `mov eax,
//!    0`, the nop form `nop [rax+rax]`, the trampoline's `ud1 %esp, %ecx`,
//!    the far form's `br x16`) spells the one the constant encodes, in
//!    Intel or AT&T syntax;
//! 3. no text names a form that the crate does not write (the zero form
//!    as `xor eax, eax` or the kernel's `xor5rax`; aarch64's as `mov x0,
//!    #0`, unless the text says "never");
//! 4. every line of `Site`'s `Display` output quoted in the docs (`0x...:
//!    e8 50 fe ff ff  call 0x...`) shows the instruction its bytes decode to.
//!
//! A finding on a line listed in [`ALLOWED`] is not an error: each entry
//! says why (the text is not about a form, or it is history, or the file is
//! one this branch may not edit). An entry that matches nothing is an
//! error, so the list cannot outlive what it excuses.

use std::fs;
use std::path::{Path, PathBuf};

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic};

/// Lines whose findings are expected: (file, a substring of the line, why).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "src/arch/x86_64/mod.rs",
        "(The kernel's `xor5rax`, `cs cs cs xor eax, eax`, would stand behind a",
        "history: why the zero form is not the kernel's",
    ),
    (
        "tests/valgrind.rs",
        "form, which once was `cs cs cs xor eax, eax` behind the site's own `cs`",
        "history: what the zero form once was",
    ),
    (
        "src/os/linux/signal.rs",
        "test rax, rax; jz 1f; mov r11, rax; xor eax, eax; jmp r11",
        "not a form: the SIGTRAP handler's own code",
    ),
    // src/arch/** is being rewritten on another branch: these texts are
    // wrong and are to be fixed there, each to the form the finding names.
    (
        "src/arch/x86_64/mod.rs",
        "// The byte after xor5rax in a trampoline is the `ret` it falls into.",
        "PENDING: src/arch is not edited on this branch; should say \"after the zero form\"",
    ),
    (
        "src/arch/x86_64/mod.rs",
        "/// slot]`, `ud1 esp, ecx` (stops straight-line speculation, and is the kernel's",
        "PENDING: src/arch is not edited on this branch; should say `ud1 ecx, esp` (Intel; AT&T `ud1 %esp, %ecx`)",
    ),
    (
        "src/arch/x86_64/mod.rs",
        "0x0f, 0xb9, 0xcc, // +14: ud1 esp, ecx",
        "PENDING: src/arch is not edited on this branch; should say `ud1 ecx, esp`",
    ),
];

/// The repository root (this package's manifest directory).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Constants, read from the sources.

/// A `pub const` of an arch module: its name and line, its doc comment
/// (and the code spans in it, with their lines), its value expression and
/// the `//` notes inside that expression (with their lines).
#[derive(Debug)]
struct Const {
    name: String,
    line: usize,
    doc: String,
    doc_spans: Vec<(String, usize)>,
    expr: String,
    notes: Vec<(usize, String)>,
}

/// Every `pub const NAME: T = EXPR;` in `text`, with the `///` lines above it.
fn consts(text: &str) -> Vec<Const> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let Some(rest) = t.strip_prefix("pub const ") else {
            i += 1;
            continue;
        };
        let (line, name) = (i, rest.split(':').next().unwrap().trim().to_string());
        let mut doc = Vec::new();
        let mut j = i;
        while j > 0 && lines[j - 1].trim_start().starts_with("///") {
            j -= 1;
            doc.insert(0, (j, lines[j].trim_start().trim_start_matches("///").trim()));
        }
        // The doc's code spans, each with the line it starts on (a span may
        // cross a line break).
        let mut joined = String::new();
        let mut starts = Vec::new();
        for (n, l) in &doc {
            starts.push((joined.len(), *n));
            joined.push_str(l);
            joined.push(' ');
        }
        let line_of = |at: usize| starts.iter().rev().find(|(s, _)| *s <= at).map_or(i, |(_, n)| *n);
        let ticks: Vec<usize> = joined.match_indices('`').map(|(k, _)| k).collect();
        let doc_spans = ticks.chunks_exact(2).map(|p| (joined[p[0] + 1..p[1]].to_string(), line_of(p[0]))).collect();
        let mut expr = String::new();
        let mut notes = Vec::new();
        let mut src = rest.split_once('=').map_or("", |(_, e)| e).to_string();
        loop {
            let (code, note) = match src.find("//") {
                Some(k) => (src[..k].to_string(), Some(src[k + 2..].trim().to_string())),
                None => (src.clone(), None),
            };
            notes.extend(note.map(|n| (i, n)));
            expr.push_str(&code);
            expr.push(' ');
            if code.trim_end().ends_with(';') {
                break;
            }
            i += 1;
            src = lines[i].to_string();
        }
        let expr = expr.trim().trim_end_matches(';').trim().to_string();
        let doc = joined.trim_end().to_string();
        out.push(Const { name, line, doc, doc_spans, expr, notes });
        i += 1;
    }
    out
}

/// Evaluates an integer expression of literals, other constants, `|`, `<<`,
/// `+`, `-` and parentheses.
fn eval(expr: &str, all: &[Const]) -> u64 {
    fn toks(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        let c: Vec<char> = s.chars().collect();
        let mut i = 0;
        while i < c.len() {
            if c[i].is_whitespace() {
                i += 1;
            } else if c[i] == '<' && c.get(i + 1) == Some(&'<') {
                out.push("<<".into());
                i += 2;
            } else if c[i].is_alphanumeric() || c[i] == '_' {
                let s: String = c[i..].iter().take_while(|c| c.is_alphanumeric() || **c == '_').collect();
                i += s.chars().count();
                out.push(s);
            } else {
                out.push(c[i].to_string());
                i += 1;
            }
        }
        out
    }
    struct P<'a> {
        t: Vec<String>,
        i: usize,
        all: &'a [Const],
    }
    impl P<'_> {
        fn peek(&self) -> Option<&str> {
            self.t.get(self.i).map(String::as_str)
        }
        fn or(&mut self) -> u64 {
            let mut v = self.shift();
            while self.peek() == Some("|") {
                self.i += 1;
                v |= self.shift();
            }
            v
        }
        fn shift(&mut self) -> u64 {
            let mut v = self.add();
            while self.peek() == Some("<<") {
                self.i += 1;
                v <<= self.add();
            }
            v
        }
        fn add(&mut self) -> u64 {
            let mut v = self.atom();
            loop {
                match self.peek() {
                    Some("+") => {
                        self.i += 1;
                        v += self.atom();
                    }
                    Some("-") => {
                        self.i += 1;
                        v -= self.atom();
                    }
                    _ => return v,
                }
            }
        }
        fn atom(&mut self) -> u64 {
            let t = self.t[self.i].clone();
            self.i += 1;
            if t == "(" {
                let v = self.or();
                assert_eq!(self.peek(), Some(")"));
                self.i += 1;
                return v;
            }
            let digits = t.replace('_', "");
            if let Some(h) = digits.strip_prefix("0x") {
                return u64::from_str_radix(h, 16).unwrap();
            }
            if let Ok(v) = digits.parse() {
                return v;
            }
            let c = self.all.iter().find(|c| c.name == t).unwrap_or_else(|| panic!("no constant {t}"));
            eval(&c.expr, self.all)
        }
    }
    let mut p = P { t: toks(expr), i: 0, all };
    let v = p.or();
    assert_eq!(p.i, p.t.len(), "evaluated all of {expr:?}");
    v
}

/// The bytes of an array constant (`[0xb8, 0x00, INT3, b'S', ...]`).
fn bytes(expr: &str, all: &[Const]) -> Vec<u8> {
    let inner = expr.trim().strip_prefix('[').and_then(|e| e.strip_suffix(']')).expect("an array");
    inner
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| match e.strip_prefix("b'").and_then(|e| e.strip_suffix('\'')) {
            Some(ch) => ch.as_bytes()[0],
            None => u8::try_from(eval(e, all)).unwrap(),
        })
        .collect()
}

struct Arch {
    consts: Vec<Const>,
}

impl Arch {
    fn read(path: &str) -> Arch {
        let text = fs::read_to_string(root().join(path)).unwrap();
        Arch { consts: consts(&text) }
    }
    fn get(&self, name: &str) -> &Const {
        self.consts.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no constant {name}"))
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        bytes(&self.get(name).expr, &self.consts)
    }
    fn int(&self, name: &str) -> u64 {
        eval(&self.get(name).expr, &self.consts)
    }
}

// ---------------------------------------------------------------------------
// Decoders.

/// The first instruction of `bytes` at `ip`, as the crate's `Display`
/// formats it with the `disasm` feature.
fn x86(ip: u64, bytes: &[u8]) -> (Instruction, String) {
    let insn = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE).decode();
    let mut f = IntelFormatter::new();
    let o = f.options_mut();
    o.set_space_after_operand_separator(true);
    o.set_hex_prefix("0x");
    o.set_hex_suffix("");
    o.set_uppercase_hex(false);
    o.set_branch_leading_zeros(false);
    let mut out = String::new();
    f.format(&insn, &mut out);
    (insn, out)
}

/// Every instruction of `bytes` from offset 0, with its offset.
fn x86_all(bytes: &[u8]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (insn, text) = x86(at as u64, &bytes[at..]);
        if insn.is_invalid() {
            break;
        }
        out.push((at, text));
        at += insn.len();
    }
    out
}

/// An aarch64 word, for the instructions this crate writes (Arm ARM C6.2:
/// NOP, B, BL, BRK, BR); `None` for anything else.
fn a64(at: u64, w: u32) -> Option<String> {
    let target = || at.wrapping_add(((((w << 6) as i32) >> 6) as i64 * 4) as u64);
    if w == 0xd503_201f {
        Some("nop".into())
    } else if w & 0xfc00_0000 == 0x9400_0000 {
        Some(format!("bl {:#x}", target()))
    } else if w & 0xfc00_0000 == 0x1400_0000 {
        Some(format!("b {:#x}", target()))
    } else if w & 0xffe0_001f == 0xd420_0000 {
        Some(format!("brk #{:#x}", (w >> 5) & 0xffff))
    } else if w & 0xffff_fc1f == 0xd61f_0000 {
        Some(format!("br x{}", (w >> 5) & 31))
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// Spelling.

/// One instruction in a canonical spelling, so that `nop dword ptr
/// [rax+rax*1+0x0]`, `nop [rax+rax]` and `nopl 0x0(%rax,%rax,1)` compare
/// equal, as do `ud1 ecx, esp` and `ud1 %esp, %ecx`, or `mov eax, 0x0` and
/// `mov $0, %eax`.
fn canon(insn: &str) -> String {
    let insn = insn.trim().to_lowercase();
    let (mnemonic, ops) = insn.split_once(char::is_whitespace).unwrap_or((&insn, ""));
    let mut mnemonic = mnemonic.to_string();
    let mut ops: Vec<String> = split_ops(ops).into_iter().map(|o| o.trim().to_string()).collect();
    if ops.iter().any(|o| o.contains('%') || o.starts_with('$')) {
        // AT&T: operands reversed, sizes in the mnemonic, `disp(base,index,scale)`.
        ops.reverse();
        ops = ops.into_iter().map(|o| att_operand(&o)).collect();
        for (suffixed, plain) in [("nopl", "nop"), ("nopw", "nop"), ("xorl", "xor"), ("movl", "mov"), ("movq", "mov")] {
            if mnemonic == suffixed {
                mnemonic = plain.to_string();
            }
        }
    }
    let ops: Vec<String> = ops.iter().map(|o| intel_operand(o)).collect();
    format!("{mnemonic} {}", ops.join(","))
}

/// Operands split at top-level commas.
fn split_ops(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s[start..].trim().is_empty() {
        out.push(&s[start..]);
    }
    out
}

/// An AT&T operand in Intel spelling.
fn att_operand(o: &str) -> String {
    let o = o.trim().trim_start_matches('*');
    if let Some(imm) = o.strip_prefix('$') {
        return imm.to_string();
    }
    if let Some((disp, rest)) = o.split_once('(') {
        let parts: Vec<&str> =
            rest.trim_end_matches(')').split(',').map(|p| p.trim().trim_start_matches('%')).collect();
        let mut m = parts[0].to_string();
        if let Some(index) = parts.get(1).filter(|p| !p.is_empty()) {
            m += &format!("+{index}*{}", parts.get(2).unwrap_or(&"1"));
        }
        if !disp.is_empty() {
            m += &format!("+{disp}");
        }
        return format!("[{m}]");
    }
    o.trim_start_matches('%').to_string()
}

/// An Intel operand without what does not change the instruction's
/// meaning in these forms: memory-size keywords, `*1`, `+0`, spaces; hex
/// numbers in decimal.
fn intel_operand(o: &str) -> String {
    let mut o: String =
        o.split_whitespace().filter(|w| !matches!(*w, "byte" | "word" | "dword" | "qword" | "ptr")).collect();
    o = o.replace("*1+", "+").replace("*1]", "]").replace("+0x0]", "]").replace("+0]", "]");
    // Numbers: 0x.. and #0x.. in decimal.
    let mut out = String::new();
    let c: Vec<char> = o.chars().collect();
    let mut i = 0;
    while i < c.len() {
        if c[i] == '0' && c.get(i + 1) == Some(&'x') && (i == 0 || !c[i - 1].is_alphanumeric()) {
            let hex: String = c[i + 2..].iter().take_while(|c| c.is_ascii_hexdigit()).collect();
            if let Ok(v) = u64::from_str_radix(&hex, 16) {
                out += &v.to_string();
                i += 2 + hex.len();
                continue;
            }
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------
// The texts.

/// A file's doc text: for Markdown, all of it; for Rust, the comments only
/// (a line without a comment ends a paragraph). Each character carries its
/// line number; line breaks and comment markers read as one space.
struct Text {
    lines: Vec<String>,
    chars: Vec<(char, usize)>,
}

impl Text {
    fn new(path: &str, source: &str) -> Text {
        let lines: Vec<String> = source.lines().map(str::to_string).collect();
        let rust = path.ends_with(".rs");
        let mut chars = Vec::new();
        for (n, line) in lines.iter().enumerate() {
            let text = if rust {
                match comment_of(line) {
                    Some(c) => c.trim_start_matches(['/', '!']).to_string(),
                    None => {
                        chars.push(('\n', n));
                        chars.push(('\n', n));
                        continue;
                    }
                }
            } else {
                line.clone()
            };
            chars.extend(text.chars().map(|c| (c, n)));
            chars.push(('\n', n));
        }
        Text { lines, chars }
    }

    /// The code spans, whitespace collapsed, each with its first line
    /// number. A span does not cross a blank line.
    fn spans(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let c = &self.chars;
        let mut i = 0;
        while i < c.len() {
            if c[i].0 != '`' {
                i += 1;
                continue;
            }
            let n = c[i..].iter().take_while(|x| x.0 == '`').count();
            if n >= 3 {
                // A fence: skip to the end of its line.
                while i < c.len() && c[i].0 != '\n' {
                    i += 1;
                }
                continue;
            }
            let start = i + n;
            let mut j = start;
            let mut end = None;
            while j < c.len() {
                if c[j].0 == '\n' && c.get(j + 1).is_some_and(|x| x.0 == '\n') {
                    break;
                }
                if c[j].0 == '`' {
                    let m = c[j..].iter().take_while(|x| x.0 == '`').count();
                    if m == n {
                        end = Some(j);
                        break;
                    }
                    j += m;
                    continue;
                }
                j += 1;
            }
            match end {
                Some(e) => {
                    let s: String = c[start..e].iter().map(|x| x.0).collect();
                    out.push((s.split_whitespace().collect::<Vec<_>>().join(" "), c[start].1));
                    i = e + n;
                }
                None => i = start,
            }
        }
        out
    }

    /// The whole text, whitespace collapsed, with the line of each byte.
    fn flat(&self) -> (String, Vec<usize>) {
        let (mut s, mut at) = (String::new(), Vec::new());
        let mut space = false;
        for &(ch, n) in &self.chars {
            if ch.is_whitespace() {
                space = true;
                continue;
            }
            if space && !s.is_empty() {
                s.push(' ');
                at.push(n);
            }
            space = false;
            let mut b = [0; 4];
            for _ in ch.encode_utf8(&mut b).bytes() {
                at.push(n);
            }
            s.push(ch);
        }
        (s, at)
    }
}

/// The comment of a line of Rust: what follows the first `//` outside a
/// string literal.
fn comment_of(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    let mut in_str = false;
    let mut i = 0;
    while i + 1 < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'\'' if !in_str && b.get(i + 2) == Some(&b'\'') => i += 2,
            b'/' if !in_str && b[i + 1] == b'/' => return Some(&line[i + 2..]),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The Markdown and Rust files of the repository, relative to the root,
/// without build output and without this file.
fn files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                if !name.starts_with("target") && !name.starts_with('.') {
                    walk(&p, root, out);
                }
            } else if name.ends_with(".md") || name.ends_with(".rs") {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                if rel != "tests/doc_forms.rs" {
                    out.push(rel);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &root(), &mut out);
    out
}

// ---------------------------------------------------------------------------
// The forms and the checks.

/// What the constants encode, in canonical spelling.
struct Forms {
    zero: String,
    nop: String,
    ud1: String,
    br: String,
}

fn forms() -> Forms {
    let x = Arch::read("src/arch/x86_64/mod.rs");
    let a = Arch::read("src/arch/aarch64/mod.rs");
    let tail = x.bytes("TRAMP_TAIL");
    let ud1 = x86_all(&tail).into_iter().find(|(_, t)| t.starts_with("ud1")).expect("the tail holds a ud1").1;
    Forms {
        zero: canon(&x86(0, &x.bytes("ZERO5")).1),
        nop: canon(&x86(0, &x.bytes("NOP5")).1),
        ud1: canon(&ud1),
        br: canon(&a64(0, a.int("BR_X16") as u32).expect("BR_X16 is a br")),
    }
}

/// What is wrong with one code span, if it spells a form's instruction
/// other than the one the constants encode.
fn check_span(span: &str, f: &Forms) -> Vec<String> {
    let mut out = Vec::new();
    for insn in span.split(';').map(str::trim) {
        let c = canon(insn);
        let (m, ops) = c.split_once(' ').unwrap_or((&c, ""));
        let first = ops.split(',').next().unwrap_or("");
        let imm = |o: &str| o.trim_start_matches('#').parse::<u64>().is_ok();
        let zeroes_eax = match m {
            "xor" => matches!(ops, "eax,eax" | "rax,rax"),
            "mov" => matches!(first, "eax" | "rax") && ops.split(',').nth(1).is_some_and(imm),
            _ => false,
        };
        let expect = if insn.contains("xor5rax") || zeroes_eax {
            Some(("the zero form", &f.zero))
        } else if m == "nop" && !ops.is_empty() {
            Some(("the nop form", &f.nop))
        } else if m == "ud1" {
            Some(("the trampoline's ud1", &f.ud1))
        } else if m == "br" && ops.starts_with('x') {
            Some(("the far form's br", &f.br))
        } else {
            None
        };
        if let Some((what, right)) = expect {
            if &c != right {
                out.push(format!("`{insn}` is not {what}, which the constants encode as `{right}` (canonical)"));
            }
        }
    }
    out
}

/// Wrong names in the text, anywhere (prose or code): (byte offset, what).
fn wrong_names(flat: &str) -> Vec<(usize, String)> {
    let lower = flat.to_lowercase();
    let mut out = Vec::new();
    for wrong in ["xor eax", "xor %eax", "xor rax", "xorl %eax", "xor5rax"] {
        for (at, _) in lower.match_indices(wrong) {
            out.push((at, format!("`{wrong}...` names a zero form this crate does not write")));
        }
    }
    for (at, _) in lower.match_indices("mov x0, #0") {
        let before = &lower[at.saturating_sub(24)..at];
        if !before.contains("never") && !before.contains("not ") {
            out.push((at, "`mov x0, #0` is not aarch64's zero form (a `bl` to the key's zeroing stub)".to_string()));
        }
    }
    out
}

/// A quoted line of `Site`'s `Display` (`0x...: b0 b1 ..  insn`), if the
/// line is one: what it shows, and what its bytes decode to.
fn check_display_line(line: &str) -> Option<(String, String)> {
    let t = line.trim().trim_start_matches(['/', '!', '`']).trim_start();
    let at = t.find("0x")?;
    let rest = &t[at + 2..];
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    let rest = rest[hex.len()..].strip_prefix(": ")?;
    let addr = u64::from_str_radix(&hex, 16).ok()?;
    let mut bytes = Vec::new();
    let mut rest = rest;
    while let Some(b) = rest.get(..2).and_then(|b| u8::from_str_radix(b, 16).ok()) {
        if !rest[2..].starts_with(' ') {
            break;
        }
        bytes.push(b);
        rest = &rest[3..];
    }
    let shown = rest.strip_prefix(' ')?;
    let shown = shown.split("  ").next()?.split('`').next()?.trim();
    let decoded = match bytes.len() {
        5 => x86(addr, &bytes).1,
        4 => a64(addr, u32::from_le_bytes(bytes[..4].try_into().unwrap()))?,
        _ => return None,
    };
    Some((shown.to_string(), decoded))
}

/// How many lines of `Display` output the docs quote (each one checked).
fn display_lines(text: &Text) -> usize {
    text.lines.iter().filter(|l| check_display_line(l).is_some()).count()
}

/// Every finding in one file: (line index, message).
fn findings(text: &Text, f: &Forms) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (span, line) in text.spans() {
        out.extend(check_span(&span, f).into_iter().map(|m| (line, m)));
    }
    let (flat, at) = text.flat();
    out.extend(wrong_names(&flat).into_iter().map(|(i, m)| (at[i], m)));
    for (n, line) in text.lines.iter().enumerate() {
        if let Some((shown, decoded)) = check_display_line(line) {
            if canon(&shown) != canon(&decoded) {
                out.push((n, format!("shows `{shown}`, but its bytes are `{decoded}`")));
            }
        }
    }
    // One finding per line, its messages joined.
    out.sort();
    out.dedup();
    let mut merged: Vec<(usize, String)> = Vec::new();
    for (n, m) in out {
        match merged.last_mut() {
            Some((last, msgs)) if *last == n => *msgs += &format!("; {m}"),
            _ => merged.push((n, m)),
        }
    }
    merged
}

/// What is wrong with the arch modules' own constant docs: (file, line
/// index, message).
fn constant_findings() -> Vec<(&'static str, usize, String)> {
    const X86: &str = "src/arch/x86_64/mod.rs";
    const A64: &str = "src/arch/aarch64/mod.rs";
    let x = Arch::read(X86);
    let a = Arch::read(A64);
    let first_span =
        |c: &Const| c.doc.split('`').nth(1).unwrap_or_else(|| panic!("{} names its form", c.name)).to_string();
    let mut out = Vec::new();

    // x86-64: each form, and the opcode bytes, as iced-x86 decodes them.
    for name in ["NOP5", "ZERO5", "RET5"] {
        let (_, decoded) = x86(0, &x.bytes(name));
        let doc = first_span(x.get(name));
        if canon(&doc) != canon(&decoded) {
            out.push((X86, x.get(name).line, format!("{name}: documented `{doc}`, encodes `{decoded}`")));
        }
    }
    assert_eq!(x.bytes("RET5")[1..], [x.int("INT3") as u8; 4], "RET5 is `ret` padded with `int3`");
    for (name, mnemonic, doc_name) in [
        ("INT3", Mnemonic::Int3, "int3"),
        ("CALL_REL32", Mnemonic::Call, "call rel32"),
        ("JMP_REL32", Mnemonic::Jmp, "jmp rel32"),
    ] {
        let (insn, _) = x86(0, &[x.int(name) as u8, 0, 0, 0, 0]);
        let rel32 = !doc_name.ends_with("rel32") || insn.len() == 5;
        if insn.mnemonic() != mnemonic || !rel32 || first_span(x.get(name)) != doc_name {
            out.push((
                X86,
                x.get(name).line,
                format!("{name}: documented `{}`, decodes as {insn}", first_span(x.get(name))),
            ));
        }
    }

    // The trampoline tail: what its `// +N:` notes name stands at `+N`, and
    // what its doc names stands there in that order.
    let tail_const = x.get("TRAMP_TAIL");
    let tail = x.bytes("TRAMP_TAIL");
    let insn_len = x.int("INSN_LEN") as usize;
    let decoded = x86_all(&tail);
    let mnemonics = ["ret", "int3", "jmp", "ud1", "call", "nop", "mov"];
    for (line, note) in &tail_const.notes {
        let Some((off, insns)) = note.strip_prefix('+').and_then(|n| n.split_once(": ")) else { continue };
        let Ok(off) = off.parse::<usize>() else { continue };
        let mut at = off - insn_len;
        for insn in insns.split(';').map(str::trim).filter(|i| mnemonics.iter().any(|m| i.starts_with(m))) {
            match decoded.iter().find(|(o, _)| *o == at) {
                Some((_, d)) if canon(d).split(' ').next() == canon(insn).split(' ').next() => {
                    if insn.starts_with("ud1") && canon(d) != canon(insn) {
                        out.push((X86, *line, format!("TRAMP_TAIL note +{off}: `{insn}`, encodes `{d}`")));
                    }
                    let (i, _) = x86(at as u64, &tail[at..]);
                    at += i.len();
                }
                other => {
                    out.push((
                        X86,
                        *line,
                        format!("TRAMP_TAIL note +{off}: `{insn}` at +{}, decodes as {other:?}", at + insn_len),
                    ));
                    break;
                }
            }
        }
    }
    let mut from = 0;
    for (span, line) in &tail_const.doc_spans {
        let Some(m) = mnemonics.iter().find(|m| span.split(' ').next() == Some(**m)) else { continue };
        match decoded[from..].iter().position(|(_, d)| d.starts_with(m)) {
            Some(p) => from += p + 1,
            None => out.push((X86, *line, format!("TRAMP_TAIL doc: `{span}` is not next in {decoded:?}"))),
        }
    }
    let sig = decoded.iter().find(|(_, d)| d.starts_with("ud1")).map(|(o, _)| o + 3).expect("a ud1");
    assert_eq!(&tail[sig..sig + 5], b"SCALL", "the signature follows the ud1");

    // aarch64: each constant is the instruction its doc names.
    for name in ["NOP", "B", "BL", "BRK_SC", "BR_X16"] {
        let decoded = a64(0, a.int(name) as u32).unwrap_or_else(|| panic!("{name} decodes"));
        let doc = first_span(a.get(name));
        let same = if matches!(name, "B" | "BL") {
            decoded.split(' ').next() == Some(doc.as_str())
        } else {
            canon(&doc) == canon(&decoded)
        };
        if !same {
            out.push((A64, a.get(name).line, format!("{name}: documented `{doc}`, encodes `{decoded}`")));
        }
    }
    out
}

#[test]
fn docs_agree_with_the_constants() {
    let f = forms();
    let mut found: Vec<(String, usize, String, String)> = Vec::new();
    let mut texts = std::collections::HashMap::new();
    for path in files() {
        let source = fs::read_to_string(root().join(&path)).unwrap();
        let text = Text::new(&path, &source);
        for (n, msg) in findings(&text, &f) {
            found.push((path.clone(), n, text.lines[n].clone(), msg));
        }
        texts.insert(path, text);
    }
    // The demo output quoted in the README (x86-64) and in docs/aarch64.md
    // is checked line by line: four and six lines.
    assert_eq!(display_lines(&texts["README.md"]), 4, "README.md's demo output is read");
    assert_eq!(display_lines(&texts["docs/aarch64.md"]), 6, "docs/aarch64.md's demo output is read");
    for (path, n, msg) in constant_findings() {
        found.push((path.to_string(), n, texts[path].lines[n].clone(), msg));
    }
    let mut errors = Vec::new();
    let mut used = vec![false; ALLOWED.len()];
    for (path, n, line, msg) in found {
        match ALLOWED.iter().position(|(p, s, _)| *p == path && line.contains(s)) {
            Some(k) => used[k] = true,
            None => errors.push(format!("{path}:{}: {msg}\n    {}", n + 1, line.trim())),
        }
    }
    for (k, (p, s, why)) in ALLOWED.iter().enumerate() {
        if !used[k] {
            errors.push(format!("ALLOWED entry matches no finding any more, remove it: {p}: {s:?} ({why})"));
        } else if why.starts_with("PENDING") {
            eprintln!("{p}: {why}");
        }
    }
    assert!(errors.is_empty(), "{} texts disagree with the constants:\n{}", errors.len(), errors.join("\n"));
}

/// The checks can fail: each kind of wrong text is found, and the right
/// spellings pass.
#[test]
fn the_checks_find_wrong_texts() {
    let f = forms();
    let found = |path: &str, src: &str| findings(&Text::new(path, src), &f).len();
    assert_eq!(found("a.md", "sites become `mov eax, 0`, `nop [rax+rax]`; `ud1 %esp, %ecx`, `br x16`"), 0);
    assert_eq!(found("a.md", "never `mov x0, #0`; the AT&T `mov $0, %eax`, `nopl 0x0(%rax,%rax,1)`"), 0);
    assert_eq!(found("a.md", "sites become `xor eax, eax`"), 1);
    assert_eq!(found("a.rs", "/// a site is `xor eax,\n/// eax` after reset\nfn f() {}"), 1);
    assert_eq!(found("a.rs", "fn f() { asm!(\"xor eax, eax\") } // not a doc"), 0);
    assert_eq!(found("a.md", "after xor5rax"), 1);
    assert_eq!(found("a.md", "`nop word ptr [rax]`"), 1);
    assert_eq!(found("a.md", "`ud1 esp, ecx`"), 1);
    assert_eq!(found("a.md", "`br x17`"), 1);
    assert_eq!(found("a.md", "the zero form is `mov x0, #0`"), 1);
    // A quoted `Display` line whose text does not match its bytes.
    assert_eq!(found("a.md", "  HASH      0x1000: e8 00 00 00 00  call 0x1005  -> f"), 0);
    assert_eq!(found("a.md", "  HASH      0x1000: e8 00 00 00 00  call 0x1006  -> f"), 1);
    assert_eq!(found("a.md", "  X  0x550000ca98: 1f 20 03 d5  nop  (no target)"), 0);
    assert_eq!(found("a.md", "  X  0x550000ca98: 1f 20 03 d5  b 0x550000ca98"), 1);
}
