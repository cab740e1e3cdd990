//! Sans-IO SIP: message model, transactions, dialogs and the B2BUA call logic. Nothing here
//! touches a socket or reads a clock; time is always an argument.

pub mod advertise;
pub mod auth;
pub mod b2bua;
pub mod dialog;
pub mod digest;
pub mod header;
pub mod message;
pub mod negotiate;
pub mod policy;
pub mod transaction;
pub mod translate;
pub mod validate;
