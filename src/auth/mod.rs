//! Who may read what (DESIGN.md, "Auth"): JWT verification ([`verify`]) and the per-collection
//! rules that turn a token's claims into the rows it may read ([`access`]).

pub mod access;
pub mod verify;
pub mod write;

pub use access::{Access, Grant};
pub use verify::{Claims, Verifier};
pub use write::WriteGrant;
