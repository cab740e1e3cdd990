//! Call policy the B2BUA applies around routing: emergency numbers, deny-lists (toll-fraud
//! control), response-code mapping and the header policy of the INVITE toward a trunk. Pure
//! functions of the configuration and the caller's INVITE, so each rule is tested on its own.

use std::net::SocketAddr;

use super::dialog::PRODUCT;
use super::message::Message;
use super::translate::{rewrite_identity, translate};
use crate::config::{Config, Direction, HeaderAction, NumberField, Route, Trunk};

/// Whether `called` (the Request-URI user part as the caller sent it, before any translation)
/// is an emergency number of `sip.emergency`. Emergency calls bypass deny-lists, and the call
/// limits and drain call this too, so that every policy agrees on what an emergency call is.
pub fn is_emergency(config: &Config, called: &str) -> bool {
    config.sip.emergency.iter().any(|re| re.is_match(called))
}

/// The trunks of `route` that may carry a call to `called` (the normalised number), in failover
/// order: none when the route's deny-list matches, else those whose own deny-list does not.
/// Emergency calls keep every trunk. An empty result means the call is refused with 403.
pub fn permitted_trunks(
    config: &Config,
    route: &Route,
    called: &str,
    emergency: bool,
) -> Vec<usize> {
    let denies = |list: &[regex::Regex]| !emergency && list.iter().any(|re| re.is_match(called));
    if denies(&route.deny) {
        return Vec::new();
    }
    route
        .to
        .iter()
        .copied()
        .filter(|t| !denies(&config.trunks[*t].policy.deny))
        .collect()
}

/// The code the caller sees for a final response `code` from `trunk` (`trunk.response_map`).
pub fn map_response(trunk: &Trunk, code: u16) -> u16 {
    trunk
        .policy
        .response_map
        .iter()
        .find(|(from, _)| *from == code)
        .map_or(code, |(_, to)| *to)
}

/// The policy headers of the INVITE toward trunk `b` for a call from trunk `a`, in order:
/// passed ones copied from the caller's `invite` (identities with the calling number translated
/// by `a`'s inbound and `b`'s outbound rules and with `host`, mediagate's address toward `b`),
/// set ones with their value, User-Agent with mediagate's product token unless configured.
pub fn headers_toward(
    config: &Config,
    a: usize,
    b: usize,
    invite: &Message,
    host: SocketAddr,
) -> Vec<(&'static str, String)> {
    let (rules_in, rules_out) = (
        &config.trunks[a].policy.translate,
        &config.trunks[b].policy.translate,
    );
    let number = |n: &str| {
        let normal = translate(rules_in, Direction::In, NumberField::Calling, n);
        translate(rules_out, Direction::Out, NumberField::Calling, &normal)
    };
    let host = host.to_string();
    let mut out = Vec::new();
    for (name, action) in config.trunks[b].policy.headers.actions() {
        if name == "Server" {
            continue; // a response header: see `server_policy`
        }
        match action {
            HeaderAction::Default if name == "User-Agent" => out.push((name, PRODUCT.to_string())),
            HeaderAction::Default | HeaderAction::Strip => {}
            HeaderAction::Set(v) => out.push((name, v.clone())),
            HeaderAction::Pass => {
                let identity = matches!(name, "P-Asserted-Identity" | "P-Preferred-Identity");
                out.extend(invite.headers_named(name).map(|v| {
                    let v = if identity {
                        rewrite_identity(v, &host, number)
                    } else {
                        v.to_string()
                    };
                    (name, v)
                }));
            }
        }
    }
    out
}

/// Applies trunk `t`'s `Server` policy to a response mediagate sends to one of its peers:
/// mediagate's product token (default and `pass`, whose relayed value the B2BUA copies before),
/// removed (`strip`) or replaced (`set`).
pub fn server_policy(config: &Config, t: usize, response: &mut Message) {
    let Some((_, action)) = config.trunks[t]
        .policy
        .headers
        .actions()
        .find(|(name, _)| *name == "Server")
    else {
        return;
    };
    match action {
        HeaderAction::Default | HeaderAction::Pass => {}
        HeaderAction::Strip => response.remove_headers("Server"),
        HeaderAction::Set(v) => response.set_header("Server", v.clone()),
    }
}

/// Whether trunk `t` passes the callee's `Server` header to its callers.
pub fn passes_server(config: &Config, t: usize) -> bool {
    config.trunks[t]
        .policy
        .headers
        .actions()
        .any(|(name, action)| name == "Server" && *action == HeaderAction::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    const CONFIG: &str = r#"
[sip]
listen = ["udp:10.0.1.1:5060", "udp:10.0.2.1:5060"]
emergency = ["^112$", "^911$"]
[media]
ports = "30000-30999"
[[trunk]]
name = "pbx"
kind = "lan"
peers = ["udp:10.0.1.2:5060"]
local = "udp:10.0.1.1:5060"
[[trunk.translate]]
field = "calling"
direction = "in"
match = '^(\d{3})$'
replace = "+4930555$1"
[[trunk]]
name = "itsp1"
kind = "itsp"
peers = ["udp:10.0.2.2:5060"]
local = "udp:10.0.2.1:5060"
deny = ['^\+1900']
response_map = [{ from = 404, to = 480 }]
[trunk.headers]
pass = ["p-asserted-identity", "Privacy"]
set = { "User-Agent" = "pbx-gw" }
[[trunk.translate]]
field = "calling"
direction = "out"
match = '^\+49'
replace = "0049"
[[trunk]]
name = "itsp2"
kind = "itsp"
peers = ["udp:10.0.2.3:5060"]
local = "udp:10.0.2.1:5060"
[trunk.headers]
strip = ["User-Agent"]
[[route]]
from = ["pbx"]
match = ".*"
deny = ['^\+882']
to = ["itsp1", "itsp2"]
"#;

    fn config() -> Config {
        config::parse("t.toml", CONFIG).unwrap()
    }

    #[test]
    fn emergency_numbers_match_the_dialled_number() {
        let c = config();
        assert!(is_emergency(&c, "112"));
        assert!(is_emergency(&c, "911"));
        assert!(!is_emergency(&c, "1120"));
        assert!(!is_emergency(&c, "+4930112"));
    }

    #[test]
    fn deny_lists_of_route_and_trunks() {
        let c = config();
        let route = &c.routes[0];
        assert_eq!(permitted_trunks(&c, route, "+4930123", false), vec![1, 2]);
        assert!(permitted_trunks(&c, route, "+88210", false).is_empty());
        assert_eq!(
            permitted_trunks(&c, route, "+1900555", false),
            vec![2],
            "the trunk that denies is skipped"
        );
        assert_eq!(
            permitted_trunks(&c, route, "+88210", true),
            vec![1, 2],
            "emergency bypasses deny-lists"
        );
    }

    #[test]
    fn response_codes_map_per_trunk() {
        let c = config();
        assert_eq!(map_response(&c.trunks[1], 404), 480);
        assert_eq!(map_response(&c.trunks[1], 486), 486);
        assert_eq!(map_response(&c.trunks[2], 404), 404);
    }

    #[test]
    fn header_policy_passes_translates_sets_and_strips() {
        let c = config();
        let invite = Message::parse_datagram(
            b"INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n\
              From: <sip:100@pbx>;tag=f\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
              P-Asserted-Identity: \"Desk\" <sip:100@10.0.1.2>\r\nPrivacy: id\r\n\
              Diversion: <sip:200@10.0.1.2>;reason=unconditional\r\nUser-Agent: PBX 1.0\r\n\r\n",
        )
        .unwrap();
        let host: SocketAddr = "10.0.2.1:5060".parse().unwrap();
        assert_eq!(
            headers_toward(&c, 0, 1, &invite, host),
            vec![
                (
                    "P-Asserted-Identity",
                    "\"Desk\" <sip:004930555100@10.0.2.1:5060>".to_string()
                ),
                ("Privacy", "id".to_string()),
                ("User-Agent", "pbx-gw".to_string()),
            ]
        );
        assert!(
            headers_toward(&c, 0, 2, &invite, host).is_empty(),
            "itsp2 strips everything, User-Agent included"
        );
        let mut no_policy = c.clone();
        no_policy.trunks[2].policy.headers = Default::default();
        assert_eq!(
            headers_toward(&no_policy, 0, 2, &invite, host),
            vec![("User-Agent", PRODUCT.to_string())],
            "default: only mediagate's own User-Agent"
        );
    }
}
