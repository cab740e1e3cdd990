//! Number translation (`[[trunk.translate]]`): pure functions from the rules of a trunk and a
//! call's numbers to the numbers the other side sees, and the rewrite of an identity header's
//! URI (P-Asserted-Identity, P-Preferred-Identity) to a translated number.
//!
//! Inbound rules of the source trunk run once, before routing; their result is the call's
//! normalised numbers, which routes, deny-lists and every outbound trunk start from (so a
//! failover to another trunk applies that trunk's outbound rules to the same normalised numbers).

use super::header;
use super::message::Message;
use crate::config::{Direction, NumberField, TranslateRule};

/// The called and calling numbers of a call (user parts; the calling one may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbers {
    pub called: String,
    pub calling: String,
}

impl Numbers {
    /// The numbers as the caller sent them: the Request-URI user part and the From user part.
    pub fn of_invite(invite: &Message) -> Numbers {
        let from = invite.header("From").unwrap_or_default();
        Numbers {
            called: header::uri_user(invite.uri().unwrap_or_default()).to_string(),
            calling: header::uri_user(header::uri_of(from)).to_string(),
        }
    }

    /// Both numbers after the rules of one direction.
    pub fn translated(&self, rules: &[TranslateRule], direction: Direction) -> Numbers {
        Numbers {
            called: translate(rules, direction, NumberField::Called, &self.called),
            calling: translate(rules, direction, NumberField::Calling, &self.calling),
        }
    }
}

/// `number` after the first rule of `field` and `direction` whose regex matches it (its matched
/// text replaced, `$1` expanded); unchanged when no rule matches.
pub fn translate(
    rules: &[TranslateRule],
    direction: Direction,
    field: NumberField,
    number: &str,
) -> String {
    rules
        .iter()
        .filter(|r| r.direction == direction && r.field == field)
        .find(|r| r.pattern.is_match(number))
        .map_or_else(
            || number.to_string(),
            |r| r.pattern.replace(number, r.replace.as_str()).into_owned(),
        )
}

/// An identity header value (`"Name" <sip:user@host;params>;params`, `<tel:+49...>` or a bare
/// URI) with the number rewritten by `number` and, for SIP URIs, the host replaced by `host`
/// (mediagate's own address: the caller's host is topology). Other URI schemes pass unchanged.
pub fn rewrite_identity(value: &str, host: &str, number: impl FnOnce(&str) -> String) -> String {
    let (start, end) = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => (a + 1, b),
        _ => {
            let v = value.trim_start();
            let lead = value.len() - v.len();
            (lead, lead + v.find(';').unwrap_or(v.len()))
        }
    };
    let uri = &value[start..end];
    let Some((scheme, rest)) = uri.split_once(':') else {
        return value.to_string();
    };
    let new_uri = if scheme.eq_ignore_ascii_case("tel") {
        let (num, params) = rest.split_at(rest.find(';').unwrap_or(rest.len()));
        format!("{scheme}:{}{params}", number(num))
    } else if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        let Some((userinfo, hostpart)) = rest.split_once('@') else {
            return value.to_string();
        };
        let (user, user_params) = userinfo.split_at(userinfo.find(';').unwrap_or(userinfo.len()));
        let uri_params = &hostpart[hostpart.find(';').unwrap_or(hostpart.len())..];
        format!("{scheme}:{}{user_params}@{host}{uri_params}", number(user))
    } else {
        return value.to_string();
    };
    format!("{}{new_uri}{}", &value[..start], &value[end..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn rule(field: NumberField, direction: Direction, m: &str, r: &str) -> TranslateRule {
        TranslateRule {
            field,
            direction,
            pattern: Regex::new(m).unwrap(),
            replace: r.into(),
        }
    }

    fn rules() -> Vec<TranslateRule> {
        use Direction::*;
        use NumberField::*;
        vec![
            rule(Called, In, "^00", "+"),
            rule(Called, In, "^0", "+4930"),
            rule(Called, Out, r"^\+49(\d+)$", "0$1"),
            rule(Calling, In, r"^(\d{3})$", "+49301234${1}"),
            rule(Calling, Out, "^$", "anonymous"),
        ]
    }

    #[test]
    fn first_matching_rule_per_field_and_direction_wins() {
        let r = rules();
        assert_eq!(
            translate(&r, Direction::In, NumberField::Called, "004420"),
            "+4420",
            "`^00` comes before `^0`"
        );
        assert_eq!(
            translate(&r, Direction::In, NumberField::Called, "0123"),
            "+4930123"
        );
        assert_eq!(
            translate(&r, Direction::In, NumberField::Called, "+1555"),
            "+1555",
            "no rule: unchanged"
        );
        assert_eq!(
            translate(&r, Direction::Out, NumberField::Called, "+4930123"),
            "030123",
            "captures"
        );
        assert_eq!(
            translate(&r, Direction::Out, NumberField::Calling, "100"),
            "100",
            "an inbound calling rule does not run outbound"
        );
    }

    #[test]
    fn numbers_translate_both_fields() {
        let msg = Message::parse_datagram(
            b"INVITE sip:0123@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n\
              From: \"Desk\" <sip:100@pbx>;tag=f\r\nTo: <sip:0123@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n",
        )
        .unwrap();
        let n = Numbers::of_invite(&msg).translated(&rules(), Direction::In);
        assert_eq!(
            n,
            Numbers {
                called: "+4930123".into(),
                calling: "+49301234100".into()
            }
        );
        let out = n.translated(&rules(), Direction::Out);
        assert_eq!(out.called, "030123");
        assert_eq!(out.calling, "+49301234100");
        let anon = Numbers {
            called: "1".into(),
            calling: String::new(),
        };
        assert_eq!(
            anon.translated(&rules(), Direction::Out).calling,
            "anonymous"
        );
    }

    #[test]
    fn identity_uris_get_the_number_and_our_host() {
        let plus = |n: &str| format!("+49{n}");
        assert_eq!(
            rewrite_identity(
                "\"Desk\" <sip:100;isub=1@10.0.0.2:5060;user=phone>;x=y",
                "10.99.2.1:5060",
                plus
            ),
            "\"Desk\" <sip:+49100;isub=1@10.99.2.1:5060;user=phone>;x=y"
        );
        assert_eq!(
            rewrite_identity("<tel:100;phone-context=x>", "h", plus),
            "<tel:+49100;phone-context=x>"
        );
        assert_eq!(
            rewrite_identity(" sip:100@10.0.0.2;user=phone", "h", plus),
            " sip:+49100@h;user=phone"
        );
        assert_eq!(rewrite_identity("<mailto:a@b>", "h", plus), "<mailto:a@b>");
        assert_eq!(rewrite_identity("garbage", "h", plus), "garbage");
    }
}
