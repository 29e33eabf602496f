//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden, and free to change with
//! them): the Redis reply decoder.

pub use crate::reply::*;
