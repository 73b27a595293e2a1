//! Patch and ownership machinery: list merge semantics, strategic merge patch, field sets,
//! managedFields and server-side apply.

pub mod apply;
pub mod fields;
pub mod listtype;
pub mod managed;
pub mod strategic;
