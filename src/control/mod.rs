//! Control protocols for clusters of SIP engines: rtpengine's NG protocol, so that Kamailio and
//! OpenSIPS can drive mediagate as their media relay.

pub mod bencode;
pub mod ng;
