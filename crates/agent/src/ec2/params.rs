//! The Query protocol's form, decoded strictly and then read into a typed request per
//! action. EC2's lists are numbered parameters: `InstanceId.1`, `Filter.1.Name` with
//! `Filter.1.Value.1`, `TagSpecification.1.Tag.1.Key`. Every parameter must be used by the
//! action: one left over is `UnknownParameter`, naming it. A value that breaks its rule is
//! `InvalidParameterValue`, naming the parameter and the rule.
//!
//! The decoder is written here rather than taken from `form_urlencoded`, which passes
//! malformed `%` escapes through and replaces invalid UTF-8: a request must say exactly
//! what was signed, or be refused.

use super::errors::Ec2Error;
use std::collections::BTreeMap;

/// Decodes `application/x-www-form-urlencoded` bytes: `&`-separated `name=value` pairs,
/// `+` a space, `%XX` a byte; the result must be UTF-8. Empty segments are skipped.
pub fn decode_form(bytes: &[u8]) -> Result<Vec<(String, String)>, Ec2Error> {
    let mut out = Vec::new();
    for part in bytes.split(|&b| b == b'&') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = match part.iter().position(|&b| b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &b""[..]),
        };
        let k = unescape(k)?;
        if k.is_empty() {
            return Err(Ec2Error::MalformedQueryString(
                "a parameter has an empty name".into(),
            ));
        }
        out.push((k, unescape(v)?));
    }
    Ok(out)
}

fn unescape(s: &[u8]) -> Result<String, Ec2Error> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        Ec2Error::MalformedQueryString(
                            "a '%' must be followed by two hex digits".into(),
                        )
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| Ec2Error::MalformedQueryString("the form is not UTF-8 once decoded".into()))
}

/// A request's parameters (or one numbered group of them, `Filter.1.`), taken one by one;
/// what is never taken is an unknown parameter.
#[derive(Debug, Clone, Default)]
pub struct Params {
    /// The names below `prefix`, with their values.
    map: BTreeMap<String, String>,
    /// The group's prefix (`Filter.1.`), for naming parameters in errors.
    prefix: String,
}

impl Params {
    /// The parameters of `pairs` (each name at most once).
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Params, Ec2Error> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if map.contains_key(&k) {
                return Err(Ec2Error::MalformedQueryString(format!(
                    "the parameter {k} is given more than once"
                )));
            }
            map.insert(k, v);
        }
        Ok(Params {
            map,
            prefix: String::new(),
        })
    }

    /// The full name of `name` (with the group's prefix).
    pub fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Takes `name`.
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.map.remove(name)
    }

    /// Takes `name`, which must be given.
    pub fn required(&mut self, name: &str) -> Result<String, Ec2Error> {
        self.take(name)
            .ok_or_else(|| Ec2Error::MissingParameter(self.full(name)))
    }

    /// Takes a boolean (`true` or `false`).
    pub fn bool(&mut self, name: &str) -> Result<Option<bool>, Ec2Error> {
        match self.take(name).as_deref() {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(Ec2Error::invalid(format!(
                "Value ({v}) for parameter {} is invalid. Expected: 'true' or 'false'.",
                self.full(name)
            ))),
        }
    }

    /// Takes an integer in `lo..=hi`.
    pub fn int(&mut self, name: &str, lo: i64, hi: i64) -> Result<Option<i64>, Ec2Error> {
        let Some(v) = self.take(name) else {
            return Ok(None);
        };
        match v.parse::<i64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(Ec2Error::invalid(format!(
                "Value ({v}) for parameter {} is invalid. Expected: an integer from {lo} to {hi}.",
                self.full(name)
            ))),
        }
    }

    /// Takes the numbered list `name.1`, `name.2`, ... in index order.
    pub fn list(&mut self, name: &str) -> Vec<String> {
        let mut items: Vec<(u32, String)> = Vec::new();
        let keys: Vec<String> = self.map.keys().cloned().collect();
        for k in keys {
            let Some(n) = k.strip_prefix(name).and_then(|r| r.strip_prefix('.')) else {
                continue;
            };
            if let Some(n) = index(n) {
                if let Some(v) = self.map.remove(&k) {
                    items.push((n, v));
                }
            }
        }
        items.sort_by_key(|(n, _)| *n);
        items.into_iter().map(|(_, v)| v).collect()
    }

    /// Takes the numbered groups `name.N.*`, each as its own [`Params`] (prefix
    /// `name.N.`), in index order.
    pub fn groups(&mut self, name: &str) -> Vec<Params> {
        let mut groups: BTreeMap<u32, Params> = BTreeMap::new();
        let keys: Vec<String> = self.map.keys().cloned().collect();
        for k in keys {
            let Some(rest) = k.strip_prefix(name).and_then(|r| r.strip_prefix('.')) else {
                continue;
            };
            let Some((n, sub)) = rest.split_once('.') else {
                continue;
            };
            let (Some(n), false) = (index(n), sub.is_empty()) else {
                continue;
            };
            if let Some(v) = self.map.remove(&k) {
                let g = groups.entry(n).or_insert_with(|| Params {
                    map: BTreeMap::new(),
                    prefix: format!("{}{name}.{n}.", self.prefix),
                });
                g.map.insert(sub.to_string(), v);
            }
        }
        groups.into_values().collect()
    }

    /// Ends reading: a parameter not taken is unknown.
    pub fn finish(self) -> Result<(), Ec2Error> {
        match self.map.into_keys().next() {
            Some(k) => Err(Ec2Error::UnknownParameter(format!("{}{k}", self.prefix))),
            None => Ok(()),
        }
    }
}

/// A list index: a positive decimal without leading zeros (so `01` and `1` are not two
/// names for one item).
fn index(s: &str) -> Option<u32> {
    if s.starts_with('0') || s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n > 0)
}

/// A filter: a name and the values it matches (any of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// `instance-state-name`, `tag:Name`, ...
    pub name: String,
    /// Patterns (`*` and `?` are wildcards).
    pub values: Vec<String>,
}

/// Takes `Filter.N.Name` / `Filter.N.Value.M`.
pub fn filters(p: &mut Params) -> Result<Vec<Filter>, Ec2Error> {
    let mut out = Vec::new();
    for mut g in p.groups("Filter") {
        let name = g.required("Name")?;
        let values = g.list("Value");
        if values.is_empty() {
            return Err(Ec2Error::invalid(format!(
                "The filter '{name}' needs at least one value ({})",
                g.full("Value.1")
            )));
        }
        g.finish()?;
        out.push(Filter { name, values });
    }
    Ok(out)
}

/// One page of a describe: how many, from where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// `MaxResults`.
    pub max_results: Option<u32>,
    /// `NextToken`, as given.
    pub next_token: Option<String>,
}

/// Takes `MaxResults` (in `lo..=hi`) and `NextToken`.
pub fn page(p: &mut Params, lo: i64, hi: i64) -> Result<Page, Ec2Error> {
    let max_results = p
        .int("MaxResults", lo, hi)?
        .and_then(|n| u32::try_from(n).ok());
    Ok(Page {
        max_results,
        next_token: p.take("NextToken"),
    })
}

/// Takes tags `name.N.Key` / `name.N.Value` (EC2's rules: a key of 1 to 128 characters
/// not starting with `aws:`, a value of at most 256, no key twice). `need_value`: a
/// missing value is an error (else it is `None`).
pub fn tags(p: &mut Params, name: &str) -> Result<Vec<(String, Option<String>)>, Ec2Error> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for mut g in p.groups(name) {
        let key = g.required("Key")?;
        let value = g.take("Value");
        if key.is_empty() || key.chars().count() > 128 {
            return Err(Ec2Error::invalid(format!(
                "{}: a tag key must be 1 to 128 characters",
                g.full("Key")
            )));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(Ec2Error::invalid(format!(
                "{}: tag keys starting with 'aws:' are reserved",
                g.full("Key")
            )));
        }
        if value.as_ref().is_some_and(|v| v.chars().count() > 256) {
            return Err(Ec2Error::invalid(format!(
                "{}: a tag value must be at most 256 characters",
                g.full("Value")
            )));
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(Ec2Error::invalid(format!(
                "{}: the tag key '{key}' is given twice",
                g.full("Key")
            )));
        }
        g.finish()?;
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(form: &str) -> Params {
        Params::from_pairs(decode_form(form.as_bytes()).unwrap()).unwrap()
    }

    fn code(e: Ec2Error) -> (&'static str, String) {
        (e.code_and_status().0, e.message())
    }

    #[test]
    fn the_form_is_decoded_strictly() {
        assert_eq!(
            decode_form(b"Action=Run%20It&Value=a+b&Empty=&&Bare").unwrap(),
            vec![
                ("Action".into(), "Run It".into()),
                ("Value".into(), "a b".into()),
                ("Empty".into(), String::new()),
                ("Bare".into(), String::new()),
            ]
        );
        assert_eq!(decode_form("K=%C3%A9".as_bytes()).unwrap()[0].1, "\u{e9}");
        for bad in [&b"A=%"[..], b"A=%4", b"A=%zz", b"A=%ff", b"=v", b"A=\xff"] {
            let e = decode_form(bad).unwrap_err();
            assert_eq!(e.code_and_status().0, "MalformedQueryString", "{bad:?}");
        }
        let e = Params::from_pairs(decode_form(b"A=1&A=2").unwrap()).unwrap_err();
        assert_eq!(
            code(e),
            (
                "MalformedQueryString",
                "the parameter A is given more than once".into()
            )
        );
    }

    #[test]
    fn lists_and_groups_take_their_numbered_parameters_in_order() {
        let mut p = params(
            "InstanceId.2=b&InstanceId.1=a&InstanceId.10=c&Filter.2.Name=x&Filter.2.Value.1=1\
             &Filter.1.Name=tag:Name&Filter.1.Value.2=w*&Filter.1.Value.1=v&Other=1",
        );
        assert_eq!(p.list("InstanceId"), ["a", "b", "c"]);
        let f = filters(&mut p).unwrap();
        assert_eq!(
            f,
            vec![
                Filter {
                    name: "tag:Name".into(),
                    values: vec!["v".into(), "w*".into()]
                },
                Filter {
                    name: "x".into(),
                    values: vec!["1".into()]
                },
            ]
        );
        let e = p.finish().unwrap_err();
        assert_eq!(
            code(e),
            (
                "UnknownParameter",
                "The parameter Other is not recognized".into()
            )
        );
    }

    #[test]
    fn every_error_names_the_parameter_and_the_rule() {
        let mut p = params("InstanceId.01=a&InstanceId.x=b");
        assert!(p.list("InstanceId").is_empty());
        assert_eq!(
            code(p.finish().unwrap_err()),
            (
                "UnknownParameter",
                "The parameter InstanceId.01 is not recognized".into()
            )
        );
        let mut p = params("Filter.1.Name=x&Filter.1.Valu.1=y&Filter.1.Value.1=z");
        assert_eq!(
            code(filters(&mut p).unwrap_err()),
            (
                "UnknownParameter",
                "The parameter Filter.1.Valu.1 is not recognized".into()
            )
        );
        let mut p = params("Filter.1.Name=x");
        assert_eq!(
            code(filters(&mut p).unwrap_err()),
            (
                "InvalidParameterValue",
                "The filter 'x' needs at least one value (Filter.1.Value.1)".into()
            )
        );
        let mut p = params("Filter.3.Value.1=x");
        assert_eq!(
            code(filters(&mut p).unwrap_err()),
            (
                "MissingParameter",
                "The request must contain the parameter Filter.3.Name".into()
            )
        );
        let mut p = params("MaxResults=4");
        assert_eq!(
            code(page(&mut p, 5, 1000).unwrap_err()),
            (
                "InvalidParameterValue",
                "Value (4) for parameter MaxResults is invalid. Expected: an integer from 5 to 1000."
                    .into()
            )
        );
        let mut p = params("DryRun=yes");
        assert_eq!(
            code(p.bool("DryRun").unwrap_err()),
            (
                "InvalidParameterValue",
                "Value (yes) for parameter DryRun is invalid. Expected: 'true' or 'false'.".into()
            )
        );
        let long = "k".repeat(129);
        for (form, want) in [
            (
                "Tag.1.Key=aws:x",
                "Tag.1.Key: tag keys starting with 'aws:' are reserved",
            ),
            (
                &format!("Tag.1.Key={long}"),
                "Tag.1.Key: a tag key must be 1 to 128 characters",
            ),
            (
                "Tag.1.Key=",
                "Tag.1.Key: a tag key must be 1 to 128 characters",
            ),
            (
                "Tag.1.Key=a&Tag.2.Key=a",
                "Tag.2.Key: the tag key 'a' is given twice",
            ),
        ] {
            let mut p = params(form);
            assert_eq!(
                code(tags(&mut p, "Tag").unwrap_err()),
                ("InvalidParameterValue", want.into()),
                "{form}"
            );
        }
        let mut p = params("Tag.1.Key=a&Tag.1.Value=b&Tag.2.Key=c");
        assert_eq!(
            tags(&mut p, "Tag").unwrap(),
            vec![("a".into(), Some("b".into())), ("c".into(), None)]
        );
    }
}
