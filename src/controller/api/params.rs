//! RPC parameters: the query string and a form body merged into one map, taken by name so
//! whatever is left over is a parameter the action does not have (`UnsupportedParameter`).
//! Lists are flattened as the SDK sends them: `Name.1`, `Name.2`, … numbered from 1 without
//! gaps.

use super::errors::{error, invalid, missing};
use crate::controller::model::ApiError;
use crate::error::Code;
use std::collections::BTreeMap;

pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    /// A name given twice (in the query, the body, or both) is refused: which one counts
    /// would be a guess.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self, ApiError> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if map.contains_key(&k) {
                return Err(invalid(&k, "given more than once"));
            }
            map.insert(k, v);
        }
        Ok(Params { map })
    }

    pub fn take(&mut self, name: &str) -> Option<String> {
        self.map.remove(name)
    }

    /// A mandatory parameter: absent or empty is `MissingParameter`.
    pub fn required(&mut self, name: &str) -> Result<String, ApiError> {
        match self.take(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(missing(name)),
        }
    }

    /// An optional string; empty counts as absent (the SDK sends no empty values).
    pub fn optional(&mut self, name: &str) -> Option<String> {
        self.take(name).filter(|v| !v.is_empty())
    }

    /// A boolean as the SDK spells it (`True`/`False`, Python's `str(bool)`) or as JSON does
    /// (`true`/`false`); anything else is `bad`.
    pub fn boolean(&mut self, name: &str, bad: Code) -> Result<Option<bool>, ApiError> {
        match self.take(name).as_deref() {
            None => Ok(None),
            Some("True" | "true") => Ok(Some(true)),
            Some("False" | "false") => Ok(Some(false)),
            Some(other) => Err(error(
                bad,
                format!("{name} must be True, true, False or false, not {other:?}"),
            )),
        }
    }

    /// An integer in `range`.
    pub fn integer(
        &mut self,
        name: &str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<Option<u32>, ApiError> {
        let Some(text) = self.take(name) else {
            return Ok(None);
        };
        match text.parse::<u32>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(invalid(
                name,
                format!(
                    "{text:?} is not an integer from {} to {}",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    /// `name.1..N` in order. A bare `name`, an index that is not a plain positive number, or a
    /// gap is `InvalidParameter`.
    pub fn list(&mut self, name: &str) -> Result<Vec<String>, ApiError> {
        if self.map.contains_key(name) {
            return Err(invalid(
                name,
                format!("a list is sent flattened as {name}.1, {name}.2, …"),
            ));
        }
        let prefix = format!("{name}.");
        let keys: Vec<String> = self
            .map
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        let mut items: BTreeMap<usize, String> = BTreeMap::new();
        for key in keys {
            let index = &key[prefix.len()..];
            let n = match index.parse::<usize>() {
                Ok(n) if n >= 1 && !index.starts_with('0') && !index.starts_with('+') => n,
                _ => return Err(invalid(&key, "a list index is a number from 1")),
            };
            let value = self.map.remove(&key).unwrap_or_default();
            items.insert(n, value);
        }
        for (expected, n) in (1..).zip(items.keys()) {
            if *n != expected {
                return Err(invalid(
                    &format!("{name}.{expected}"),
                    format!(
                        "{name} is numbered from 1 without gaps, but {name}.{n} follows {name}.{}",
                        expected - 1
                    ),
                ));
            }
        }
        Ok(items.into_values().collect())
    }

    /// Everything was taken: otherwise `UnsupportedParameter` naming what was not.
    pub fn finish(self, action: &str) -> Result<(), ApiError> {
        if self.map.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.map.keys().map(String::as_str).collect();
        Err(error(
            Code::OpenApiUnsupportedParameter,
            format!(
                "The parameter {} is not supported by {action}.",
                names.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn lists_are_numbered_from_one_without_gaps() {
        let mut p = params(&[("L.2", "b"), ("L.1", "a"), ("L.10", "j"), ("X", "x")]);
        let err = p.list("L").unwrap_err();
        assert_eq!(err.code, "InvalidParameter");
        assert!(err.message.contains("L.3"), "{}", err.message);

        let mut p = params(&[("L.2", "b"), ("L.1", "a"), ("L.3", "c")]);
        assert_eq!(p.list("L").unwrap(), ["a", "b", "c"]);
        p.finish("A").unwrap();

        for bad in [
            &[("L.0", "a")][..],
            &[("L.01", "a")],
            &[("L.x", "a")],
            &[("L", "a")],
        ] {
            assert_eq!(params(bad).list("L").unwrap_err().code, "InvalidParameter");
        }
        assert!(params(&[]).list("L").unwrap().is_empty());
    }

    #[test]
    fn booleans_as_the_sdk_sends_them() {
        let mut p = params(&[("A", "True"), ("B", "false"), ("C", "1")]);
        assert_eq!(
            p.boolean("A", Code::InvalidAutoInstall).unwrap(),
            Some(true)
        );
        assert_eq!(
            p.boolean("B", Code::InvalidAutoInstall).unwrap(),
            Some(false)
        );
        assert_eq!(
            p.boolean("C", Code::InvalidAutoInstall).unwrap_err().code,
            "InvalidParameter.AutoInstall"
        );
        assert_eq!(p.boolean("D", Code::InvalidAutoInstall).unwrap(), None);
    }

    #[test]
    fn leftovers_and_repeats_are_refused_by_name() {
        let p = params(&[("Bogus", "1"), ("Other", "2")]);
        let err = p.finish("SendFile").unwrap_err();
        assert_eq!(err.code, "UnsupportedParameter");
        assert!(err.message.contains("Bogus, Other"), "{}", err.message);
        let twice =
            Params::from_pairs([("A".to_string(), "1".to_string()), ("A".into(), "2".into())]);
        assert_eq!(twice.err().unwrap().code, "InvalidParameter");
    }

    #[test]
    fn integers_stay_in_range() {
        let mut p = params(&[("M", "0"), ("N", "100"), ("O", "x")]);
        assert_eq!(
            p.integer("M", 1..=100).unwrap_err().code,
            "InvalidParameter"
        );
        assert_eq!(p.integer("N", 1..=100).unwrap(), Some(100));
        assert!(p.integer("O", 1..=100).is_err());
        assert_eq!(p.integer("P", 1..=100).unwrap(), None);
    }

    #[test]
    fn required_treats_empty_as_missing() {
        let mut p = params(&[("A", "")]);
        assert_eq!(p.required("A").unwrap_err().code, "MissingParameter");
        assert_eq!(p.required("B").unwrap_err().code, "MissingParameter");
    }
}
