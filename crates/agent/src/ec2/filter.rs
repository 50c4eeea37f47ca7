//! EC2's filters and pagination, shared by the describes. A filter matches an item when
//! any of its values matches any of the item's values for that name (`*` any run of
//! characters, `?` any one, `\` escapes either); every filter must match. Pages are in a
//! stable order, and `NextToken` is where the last page ended (opaque to clients).

use super::errors::Ec2Error;
use super::params::{Filter, Page};
use base64::Engine;

/// Whether `text` matches EC2's wildcard `pattern`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matching with one backtrack point (the last `*`): linear space, and at
    // most |p| x |t| steps, whatever the pattern.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        match p.get(i) {
            Some('*') => {
                star = Some((i, j));
                i += 1;
                continue;
            }
            Some('\\') if p.get(i + 1).is_some_and(|c| *c == t[j]) => {
                i += 2;
                j += 1;
                continue;
            }
            Some('?') => {
                i += 1;
                j += 1;
                continue;
            }
            Some(c) if *c != '\\' && *c == t[j] => {
                i += 1;
                j += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((si, sj)) => {
                i = si + 1;
                j = sj + 1;
                star = Some((si, sj + 1));
            }
            None => return false,
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// What a describe's items answer for each of its filter names.
pub trait Filterable {
    /// The item's values for filter `name` (`None`: the item has no such filter).
    fn values(&self, name: &str) -> Option<Vec<String>>;
}

/// The names of `asked` for which `exists` is false, in the order asked (for the
/// `...NotFound` errors, which name every missing id).
pub fn missing(asked: &[String], exists: impl Fn(&str) -> bool) -> Vec<String> {
    asked.iter().filter(|a| !exists(a)).cloned().collect()
}

/// An item with its page key filters as the item.
impl<K, T: Filterable> Filterable for (K, T) {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        self.1.values(name)
    }
}

/// Checks `filters` against the names an action knows (`tag:` is every `tag:KEY` when
/// `tags` is set), then keeps the `items` every filter matches.
pub fn apply<T: Filterable>(
    items: Vec<T>,
    filters: &[Filter],
    known: &[&str],
    tags: bool,
) -> Result<Vec<T>, Ec2Error> {
    for f in filters {
        let tag = tags && f.name.strip_prefix("tag:").is_some_and(|k| !k.is_empty());
        if !tag && !known.contains(&f.name.as_str()) {
            return Err(Ec2Error::InvalidFilter(f.name.clone()));
        }
    }
    Ok(items
        .into_iter()
        .filter(|item| {
            filters.iter().all(|f| {
                item.values(&f.name).is_some_and(|have| {
                    have.iter()
                        .any(|h| f.values.iter().any(|pattern| glob(pattern, h)))
                })
            })
        })
        .collect())
}

/// One page of `items`, in the order of `key` (which must be unique per item), after the
/// token's position; and the token of the next page if there are more. `action` is sealed
/// into the token, so one action's token is refused by another.
pub fn paginate<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> String,
    page: &Page,
    action: &str,
) -> Result<(Vec<T>, Option<String>), Ec2Error> {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    items.sort_by_key(&key);
    if let Some(token) = &page.next_token {
        let after = engine
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.strip_prefix(action)
                    .and_then(|r| r.strip_prefix('\n'))
                    .map(str::to_string)
            })
            .ok_or_else(|| Ec2Error::InvalidNextToken(token.clone()))?;
        items.retain(|i| key(i) > after);
    }
    // A token without MaxResults continues with EC2's default page size.
    let max = match (page.max_results, &page.next_token) {
        (Some(m), _) => m as usize,
        (None, Some(_)) => 1000,
        (None, None) => return Ok((items, None)),
    };
    if items.len() <= max {
        return Ok((items, None));
    }
    items.truncate(max);
    let next = items
        .last()
        .map(|last| engine.encode(format!("{action}\n{}", key(last))));
    Ok((items, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_ec2s() {
        for (p, t, want) in [
            ("web", "web", true),
            ("web", "web1", false),
            ("web*", "web-1", true),
            ("*", "", true),
            ("w?b", "wib", true),
            ("w?b", "wb", false),
            ("*-1", "a-b-1", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("\\?x", "?x", true),
            ("", "", true),
            ("", "a", false),
        ] {
            assert_eq!(glob(p, t), want, "{p:?} vs {t:?}");
        }
        // A pattern built to backtrack is still quick.
        let long = "a".repeat(5000);
        assert!(!glob(&format!("{}b", "*a".repeat(50)), &long));
    }

    #[derive(Debug)]
    struct Item(&'static str, &'static str);
    impl Filterable for Item {
        fn values(&self, name: &str) -> Option<Vec<String>> {
            match name {
                "id" => Some(vec![self.0.into()]),
                "tag:Name" => Some(vec![self.1.into()]),
                _ => None,
            }
        }
    }

    #[test]
    fn filters_and_together_values_or_together() {
        let items = || vec![Item("a", "web"), Item("b", "db"), Item("c", "web2")];
        let f = |name: &str, values: &[&str]| Filter {
            name: name.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let got = apply(items(), &[f("tag:Name", &["web*"])], &["id"], true).unwrap();
        assert_eq!(got.iter().map(|i| i.0).collect::<Vec<_>>(), ["a", "c"]);
        let got = apply(
            items(),
            &[f("tag:Name", &["web*"]), f("id", &["c", "b"])],
            &["id"],
            true,
        )
        .unwrap();
        assert_eq!(got.iter().map(|i| i.0).collect::<Vec<_>>(), ["c"]);
        // A tag the item lacks matches nothing.
        assert!(apply(items(), &[f("tag:Other", &["*"])], &["id"], true)
            .unwrap()
            .is_empty());
        let e = apply(items(), &[f("colour", &["x"])], &["id"], true).unwrap_err();
        assert_eq!(e.code_and_status().0, "InvalidParameterValue");
        assert_eq!(e.message(), "The filter 'colour' is invalid");
        assert!(apply(items(), &[f("tag:Name", &["x"])], &["id"], false).is_err());
    }

    #[test]
    fn pages_follow_each_other_and_tokens_are_checked() {
        let items: Vec<u32> = (0..12).collect();
        let key = |n: &u32| format!("{n:04}");
        let mut page = Page {
            max_results: Some(5),
            next_token: None,
        };
        let mut seen = Vec::new();
        loop {
            let (got, next) = paginate(items.clone(), key, &page, "DescribeX").unwrap();
            seen.extend(got);
            match next {
                Some(t) => page.next_token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, items);
        let (all, none) = paginate(items.clone(), key, &Page::default(), "DescribeX").unwrap();
        assert_eq!((all.len(), none), (12, None));
        let (_, t) = paginate(
            items.clone(),
            key,
            &Page {
                max_results: Some(5),
                next_token: None,
            },
            "DescribeX",
        )
        .unwrap();
        for bad in ["!!", "bm9wZQ", t.as_deref().unwrap()] {
            let e = paginate(
                items.clone(),
                key,
                &Page {
                    max_results: None,
                    next_token: Some(bad.into()),
                },
                "DescribeY",
            )
            .unwrap_err();
            assert_eq!(e.code_and_status().0, "InvalidNextToken", "{bad}");
        }
    }
}
