//! Non-matmul operations on plain f32 slices (bounds are checked by the backend first).

pub(crate) mod attention;
pub(crate) mod elementwise;
pub(crate) mod norm;
pub(crate) mod qblock;
pub(crate) mod rope;
