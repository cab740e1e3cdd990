//! The routing and call-policy keys: number translation, response-code mapping, deny-lists,
//! emergency numbers and the header policy per trunk.
//!
//! A child module of `config` so that these keys share its error reporting (file, line, key)
//! while living apart from the keys other parts of the program own; the logic that applies them
//! is in `sip::translate` and `sip::policy`.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;

use super::{ConfigError, Seg};

/// Which number of a call a translation rule rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NumberField {
    /// The Request-URI user part (and To).
    Called,
    /// The From user part (and the asserted/preferred identity).
    Calling,
}

/// When a translation rule runs: on calls arriving from the trunk (before routing) or on calls
/// sent to it (after routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

/// One `[[trunk.translate]]` rule: where `pattern` matches, the matched text is replaced by
/// `replace` (`$1`, `${name}` captures); the first matching rule per field and direction wins.
#[derive(Debug, Clone)]
pub struct TranslateRule {
    pub field: NumberField,
    pub direction: Direction,
    pub pattern: Regex,
    pub replace: String,
}

/// Headers whose fate the operator chooses per trunk: the first six in the INVITE toward the
/// trunk (every other header of the caller is dropped by topology hiding), `Server` in the
/// responses mediagate sends to the trunk's callers.
pub const POLICY_HEADERS: [&str; 7] = [
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Privacy",
    "Diversion",
    "History-Info",
    "User-Agent",
    "Server",
];

/// What the INVITE toward a trunk carries for one of [`POLICY_HEADERS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderAction {
    /// Not configured: User-Agent carries mediagate's product token, the others are not sent.
    Default,
    /// Copied from the caller's INVITE when present (identities with translated numbers).
    Pass,
    /// Never sent.
    Strip,
    /// Always sent with this value.
    Set(String),
}

/// `trunk.headers`: one action per entry of [`POLICY_HEADERS`], in that order.
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    actions: [HeaderAction; POLICY_HEADERS.len()],
}

impl Default for HeaderPolicy {
    fn default() -> Self {
        HeaderPolicy {
            actions: std::array::from_fn(|_| HeaderAction::Default),
        }
    }
}

impl HeaderPolicy {
    /// Each policy header with its action, in [`POLICY_HEADERS`] order (the order they are sent).
    pub fn actions(&self) -> impl Iterator<Item = (&'static str, &HeaderAction)> {
        POLICY_HEADERS.iter().copied().zip(self.actions.iter())
    }
}

/// The routing and policy settings of one trunk.
#[derive(Debug, Clone, Default)]
pub struct TrunkPolicy {
    pub translate: Vec<TranslateRule>,
    /// `(from, to)` final-response codes; each `from` appears once.
    pub response_map: Vec<(u16, u16)>,
    /// Called numbers this trunk must never carry (unless emergency).
    pub deny: Vec<Regex>,
    pub headers: HeaderPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTranslate {
    field: NumberField,
    direction: Direction,
    #[serde(rename = "match")]
    pattern: String,
    replace: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResponseMap {
    from: u16,
    to: u16,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaders {
    #[serde(default)]
    pass: Vec<String>,
    #[serde(default)]
    strip: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
}

/// The policy keys of one `[[trunk]]`, borrowed from its raw table.
pub(super) struct RawTrunkPolicy<'a> {
    pub translate: &'a [RawTranslate],
    pub response_map: &'a [RawResponseMap],
    pub deny: &'a [String],
    pub headers: &'a RawHeaders,
}

/// Builds a config error for a key path (the `err` of `config::parse`).
pub(super) type ErrAt<'e> = &'e dyn Fn(&[Seg], String) -> ConfigError;

fn join<'a>(at: &[Seg<'a>], rest: &[Seg<'a>]) -> Vec<Seg<'a>> {
    at.iter().chain(rest).copied().collect()
}

/// Compiles one regex; `path` names the key in errors.
pub(super) fn regex(pattern: &str, path: &[Seg], err: ErrAt) -> Result<Regex, ConfigError> {
    Regex::new(pattern).map_err(|e| err(path, format!("invalid regex: {e}")))
}

/// Compiles a list of regexes at `at.key`.
pub(super) fn regex_list<'a>(
    list: &'a [String],
    at: &[Seg<'a>],
    err: ErrAt,
) -> Result<Vec<Regex>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| regex(p, &join(at, &[Seg::Index(i)]), err))
        .collect()
}

/// Checks that every `$group` a replacement names exists in the pattern, so a typo such as
/// `$2` with one group, or `$1x` (read as a group named `1x`), fails at load time instead of
/// silently producing an empty string on live calls.
fn check_replacement(re: &Regex, replace: &str) -> Result<(), String> {
    let mut rest = replace;
    while let Some(pos) = rest.find('$') {
        rest = &rest[pos + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            rest = r;
            continue;
        }
        let name = if let Some(r) = rest.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in `{replace}`"))?;
            rest = &r[end + 1..];
            &r[..end]
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            rest = &rest[end..];
            name
        };
        let known = match name.parse::<usize>() {
            Ok(n) => n < re.captures_len(),
            Err(_) => re.capture_names().flatten().any(|n| n == name),
        };
        if !known {
            return Err(format!(
                "`${name}` names no group of the match regex (it has {} numbered group(s); \
                 write `${{1}}x` to follow a group with letters, `$$` for a dollar sign)",
                re.captures_len() - 1
            ));
        }
    }
    Ok(())
}

/// The canonical spelling of a policy header name, matched case-insensitively.
fn policy_header(name: &str) -> Result<usize, String> {
    POLICY_HEADERS
        .iter()
        .position(|h| h.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            format!(
                "`{name}` is not a header with a policy (one of {})",
                POLICY_HEADERS.join(", ")
            )
        })
}

fn header_policy<'a>(
    raw: &'a RawHeaders,
    at: &[Seg<'a>],
    err: ErrAt,
) -> Result<HeaderPolicy, ConfigError> {
    let mut policy = HeaderPolicy::default();
    let lists = [
        ("pass", &raw.pass, HeaderAction::Pass),
        ("strip", &raw.strip, HeaderAction::Strip),
    ];
    let listed = lists.iter().flat_map(|(key, names, action)| {
        names.iter().enumerate().map(move |(i, n)| {
            (
                vec![Seg::Key(key), Seg::Index(i)],
                n.as_str(),
                action.clone(),
            )
        })
    });
    let set = raw.set.iter().map(|(n, v)| {
        (
            vec![Seg::Key("set"), Seg::Key(n.as_str())],
            n.as_str(),
            HeaderAction::Set(v.clone()),
        )
    });
    for (rest, name, action) in listed.chain(set) {
        let path = join(at, &rest);
        let i = policy_header(name).map_err(|m| err(&path, m))?;
        if policy.actions[i] != HeaderAction::Default {
            return Err(err(
                &path,
                format!("`{}` is given more than one policy", POLICY_HEADERS[i]),
            ));
        }
        if let HeaderAction::Set(v) = &action {
            if v.is_empty() || v.contains(['\r', '\n']) {
                return Err(err(
                    &path,
                    "a header value must be non-empty and on one line".into(),
                ));
            }
        }
        policy.actions[i] = action;
    }
    Ok(policy)
}

/// Validates the policy keys of the trunk at `at` (`trunk[i]`).
pub(super) fn trunk_policy<'a>(
    raw: RawTrunkPolicy<'a>,
    at: &[Seg<'a>],
    err: ErrAt,
) -> Result<TrunkPolicy, ConfigError> {
    let mut translate = Vec::new();
    for (j, r) in raw.translate.iter().enumerate() {
        let rule_at = join(at, &[Seg::Key("translate"), Seg::Index(j)]);
        let pattern = regex(&r.pattern, &join(&rule_at, &[Seg::Key("match")]), err)?;
        check_replacement(&pattern, &r.replace)
            .map_err(|m| err(&join(&rule_at, &[Seg::Key("replace")]), m))?;
        translate.push(TranslateRule {
            field: r.field,
            direction: r.direction,
            pattern,
            replace: r.replace.clone(),
        });
    }
    let mut response_map: Vec<(u16, u16)> = Vec::new();
    for (j, m) in raw.response_map.iter().enumerate() {
        let key = |k| join(at, &[Seg::Key("response_map"), Seg::Index(j), Seg::Key(k)]);
        for (k, code) in [("from", m.from), ("to", m.to)] {
            if !(400..=699).contains(&code) {
                return Err(err(
                    &key(k),
                    format!("{code} is not a final error code (400-699)"),
                ));
            }
        }
        if response_map.iter().any(|(f, _)| *f == m.from) {
            return Err(err(
                &key("from"),
                format!("{} is mapped more than once", m.from),
            ));
        }
        response_map.push((m.from, m.to));
    }
    Ok(TrunkPolicy {
        translate,
        response_map,
        deny: regex_list(raw.deny, &join(at, &[Seg::Key("deny")]), err)?,
        headers: header_policy(raw.headers, &join(at, &[Seg::Key("headers")]), err)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    /// Every routing and policy key once; line numbers matter to the rejection tests.
    const BASE: &str = r#"[sip]
listen = ["udp:10.0.1.1:5060", "udp:10.0.2.1:5060"]
emergency = ["^112$"]
[media]
ports = "30000-30999"
[[trunk]]
name = "pbx"
kind = "lan"
peers = ["udp:10.0.1.2:5060"]
local = "udp:10.0.1.1:5060"
deny = ['^\+882']
response_map = [{ from = 404, to = 480 }]
headers = { pass = ["Privacy"], set = { "User-Agent" = "x" } }
[[trunk.translate]]
field = "called"
direction = "in"
match = '^00(\d+)$'
replace = "+$1"
[[route]]
from = ["pbx"]
match = ".*"
match_calling = "^1"
deny = ['^\+881']
to = ["pbx"]
"#;

    #[test]
    fn every_key_parses() {
        let c = parse("r.toml", BASE).unwrap();
        assert_eq!(c.sip.emergency.len(), 1);
        let p = &c.trunks[0].policy;
        assert_eq!(p.response_map, vec![(404, 480)]);
        assert_eq!(p.deny.len(), 1);
        assert_eq!(p.translate[0].field, NumberField::Called);
        assert_eq!(p.translate[0].direction, Direction::In);
        let actions: Vec<_> = p.headers.actions().collect();
        assert_eq!(actions[2], ("Privacy", &HeaderAction::Pass));
        assert_eq!(actions[5], ("User-Agent", &HeaderAction::Set("x".into())));
        assert_eq!(actions[0], ("P-Asserted-Identity", &HeaderAction::Default));
        let r = &c.routes[0];
        assert!(r.calling.is_some() && r.deny.len() == 1);
        assert!(c.route_for(0, "+49", "100").is_some());
        assert!(c.route_for(0, "+49", "200").is_none(), "match_calling");
    }

    /// Replaces `old` (which must occur) in BASE and returns the error's line and key.
    fn rejected(old: &str, new: &str) -> (usize, String, String) {
        assert!(BASE.contains(old), "{old}");
        let e = parse("r.toml", &BASE.replacen(old, new, 1)).unwrap_err();
        (e.line, e.key, e.message)
    }

    #[test]
    fn bad_values_are_rejected_with_line_and_key() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (r#"["^112$"]"#, r#"["(["]"#, 3, "sip.emergency[0]"),
            (r"'^\+882'", "'('", 11, "trunk[0].deny[0]"),
            (
                "from = 404",
                "from = 99",
                12,
                "trunk[0].response_map[0].from",
            ),
            ("to = 480", "to = 200", 12, "trunk[0].response_map[0].to"),
            (
                "{ from = 404, to = 480 }",
                "{ from = 404, to = 480 }, { from = 404, to = 486 }",
                12,
                "trunk[0].response_map[1].from",
            ),
            (
                r#"pass = ["Privacy"]"#,
                r#"pass = ["X-Foo"]"#,
                13,
                "trunk[0].headers.pass[0]",
            ),
            (
                r#""User-Agent" = "x""#,
                r#""privacy" = "id""#,
                13,
                "trunk[0].headers.set.privacy",
            ),
            (
                r#""User-Agent" = "x""#,
                r#""User-Agent" = """#,
                13,
                "trunk[0].headers.set.User-Agent",
            ),
            (
                r#"field = "called""#,
                r#"field = "caller""#,
                15,
                "trunk[0].translate[0].field",
            ),
            (
                r#"direction = "in""#,
                r#"direction = "both""#,
                16,
                "trunk[0].translate[0].direction",
            ),
            (r"'^00(\d+)$'", "'^00(['", 17, "trunk[0].translate[0].match"),
            (r#""+$1""#, r#""+$2""#, 18, "trunk[0].translate[0].replace"),
            (
                r#"match_calling = "^1""#,
                r#"match_calling = "(""#,
                22,
                "route[0].match_calling",
            ),
            (r"'^\+881'", "'+'", 23, "route[0].deny[0]"),
        ];
        for (old, new, line, key) in cases {
            let (l, k, m) = rejected(old, new);
            assert_eq!((l, k.as_str()), (*line, *key), "{old} -> {new}: {m}");
        }
        let (l, _, m) = rejected("headers = { pass", "headers = { keep = [], pass");
        assert!(l == 13 && m.contains("keep"), "{l}: {m}");
        let (l, k, _) = rejected("from = 404", "from = -1");
        assert_eq!((l, k.as_str()), (12, "trunk[0].response_map[0].from"));
    }

    fn replacement(pattern: &str, replace: &str) -> Result<(), String> {
        check_replacement(&Regex::new(pattern).unwrap(), replace)
    }

    #[test]
    fn replacements_must_name_existing_groups() {
        assert!(replacement("^00(.*)$", "+$1").is_ok());
        assert!(replacement("^00(?P<rest>.*)$", "+${rest}$$").is_ok());
        assert!(replacement("^0(.*)$", "${1}9").is_ok());
        assert!(replacement("^0(.*)$", "$2").is_err());
        assert!(replacement("^0(.*)$", "$1x").is_err(), "read as group `1x`");
        assert!(replacement("^0(.*)$", "${1").is_err());
    }
}
