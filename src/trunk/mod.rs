//! Trunks as operators run them: peer health from OPTIONS keepalives ([`health`]), the order in
//! which a call tries a trunk's peers ([`select`]), and admission limits ([`limits`]). All
//! sans-IO, driven by the B2BUA with explicit instants.

pub mod health;
pub mod limits;
pub mod register;
pub mod select;
