//! Connections before authentication: what a stream holds while it is open.

mod body;

pub(crate) use body::Hold;
