#![forbid(unsafe_code)]
pub mod pb;
pub mod sandbox;
