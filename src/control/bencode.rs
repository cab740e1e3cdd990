//! Bencode, the encoding of rtpengine's NG protocol: integers, byte strings, lists and
//! dictionaries. Parsing is bounded in depth and never panics on hostile input.

use std::collections::BTreeMap;

/// Deepest nesting accepted (NG messages nest three or four levels).
const MAX_DEPTH: usize = 32;

/// A bencoded value. Dictionary keys are byte strings, kept sorted as bencode requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// Why bytes are not bencode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad bencode at byte {0}")]
pub struct DecodeError(pub usize);

impl Value {
    /// Decodes exactly one value filling all of `data`.
    pub fn decode(data: &[u8]) -> Result<Value, DecodeError> {
        let (v, used) = decode_at(data, 0, 0)?;
        if used != data.len() {
            return Err(DecodeError(used));
        }
        Ok(v)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Value::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Value::List(l) => {
                out.push(b'l');
                l.iter().for_each(|v| v.encode_into(out));
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Value::Bytes(k.clone()).encode_into(out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    /// A dictionary entry.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    /// A dictionary entry, to change it in place.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Value::Dict(d) => d.get_mut(key.as_bytes()),
            _ => None,
        }
    }

    /// The value as UTF-8 text, when it is a byte string holding text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// A list of strings (non-strings skipped), or a single string as a one-element list.
    pub fn strings(&self) -> Vec<&str> {
        match self {
            Value::List(l) => l.iter().filter_map(Value::as_str).collect(),
            Value::Bytes(_) => self.as_str().into_iter().collect(),
            _ => Vec::new(),
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Bytes(s.as_bytes().to_vec())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Bytes(s.into_bytes())
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

/// Builds a dictionary from key/value pairs.
pub fn dict<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Dict(
        entries
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

fn decode_at(data: &[u8], at: usize, depth: usize) -> Result<(Value, usize), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError(at));
    }
    match data.get(at) {
        Some(b'i') => {
            let end = find(data, at + 1, b'e')?;
            let text = std::str::from_utf8(&data[at + 1..end]).map_err(|_| DecodeError(at))?;
            // No empty number, no leading zeros, no negative zero.
            let canonical = !(text.is_empty()
                || text.starts_with("-0")
                || (text.starts_with('0') && text.len() > 1));
            let n = text
                .parse()
                .ok()
                .filter(|_| canonical)
                .ok_or(DecodeError(at))?;
            Ok((Value::Int(n), end + 1))
        }
        Some(b'l') => {
            let mut items = Vec::new();
            let mut pos = at + 1;
            while data.get(pos) != Some(&b'e') {
                let (v, next) = decode_at(data, pos, depth + 1)?;
                items.push(v);
                pos = next;
            }
            Ok((Value::List(items), pos + 1))
        }
        Some(b'd') => {
            let mut map = BTreeMap::new();
            let mut pos = at + 1;
            while data.get(pos) != Some(&b'e') {
                let (k, next) = decode_at(data, pos, depth + 1)?;
                let Value::Bytes(k) = k else {
                    return Err(DecodeError(pos));
                };
                let (v, next) = decode_at(data, next, depth + 1)?;
                map.insert(k, v);
                pos = next;
            }
            Ok((Value::Dict(map), pos + 1))
        }
        Some(b'0'..=b'9') => {
            let colon = find(data, at, b':')?;
            let len: usize = std::str::from_utf8(&data[at..colon])
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or(DecodeError(at))?;
            let start = colon + 1;
            let end = start
                .checked_add(len)
                .filter(|e| *e <= data.len())
                .ok_or(DecodeError(at))?;
            Ok((Value::Bytes(data[start..end].to_vec()), end))
        }
        _ => Err(DecodeError(at)),
    }
}

fn find(data: &[u8], from: usize, byte: u8) -> Result<usize, DecodeError> {
    data.get(from..)
        .and_then(|rest| rest.iter().position(|b| *b == byte))
        .map(|p| from + p)
        .ok_or(DecodeError(from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_an_ng_offer() {
        let v =
            Value::decode(b"d7:command5:offer7:call-id3:abc5:flagsl13:trust-addressee").unwrap();
        assert_eq!(v.get("command").and_then(Value::as_str), Some("offer"));
        assert_eq!(v.get("flags").unwrap().strings(), vec!["trust-address"]);
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            &b"d"[..],
            b"i-0e",
            b"i01e",
            b"5:abc",
            b"di1e1:xe",
            b"le1",
            b"x",
            b"",
        ] {
            assert!(
                Value::decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("{}{}", "l".repeat(100), "e".repeat(100));
        assert!(Value::decode(deep.as_bytes()).is_err());
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            prop::collection::vec(any::<u8>(), 0..20).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
                prop::collection::btree_map(prop::collection::vec(any::<u8>(), 0..8), inner, 0..8)
                    .prop_map(Value::Dict),
            ]
        })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(v in value()) {
            prop_assert_eq!(Value::decode(&v.encode()).unwrap(), v);
        }

        #[test]
        fn decode_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Value::decode(&data);
        }
    }
}
