//! Instruction encodings, per architecture.

pub mod x86_64;
