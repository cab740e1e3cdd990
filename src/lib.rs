//! mediagate: a SIP/RTP border relay. A back-to-back user agent routes calls between LAN voice
//! systems (IP-PBXs, PSTN gateways) and ITSP SIP trunks, and anchors all of their media on the box.
//!
//! Module map (see docs/ARCHITECTURE.md): [`sip`] and [`sdp`] are sans-IO protocol cores,
//! [`media`] the session model shared by every forwarding tier, [`dataplane`] the forwarding
//! tiers, [`signalling`] the I/O shell that drives the SIP core, [`metrics`] the status endpoint,
//! [`cdr`] the call detail records.

pub mod cdr;
pub mod clock;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod sdp;
pub mod signalling;
pub mod sip;
pub mod trunk;
pub mod wire;
