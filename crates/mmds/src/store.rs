//! The metadata store: one JSON object, bounded by the size of its serialisation.

use serde_json::{Map, Value};
use thiserror::Error;

/// Firecracker's default bound on the store's JSON serialisation (`--mmds-size-limit`).
pub const DEFAULT_SIZE_LIMIT: usize = 51200;

/// Why a change to the store was refused; the store is unchanged after any of them.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    /// The new contents are not a JSON object.
    #[error("the metadata must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    /// The new contents serialise to more bytes than the limit allows.
    #[error("the metadata would take {size} bytes of JSON, more than the limit of {limit} bytes")]
    TooLarge {
        /// Bytes of JSON the refused contents take.
        size: usize,
        /// The store's limit in bytes.
        limit: usize,
    },
}

/// The guest-visible metadata: a JSON object (initially `{}`) whose serialisation never
/// exceeds the limit given at construction.
#[derive(Debug, Clone)]
pub struct MmdsStore {
    data: Value,
    limit: usize,
}

impl Default for MmdsStore {
    fn default() -> Self {
        Self::new(DEFAULT_SIZE_LIMIT)
    }
}

impl MmdsStore {
    /// An empty store (`{}`) whose contents may serialise to at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            data: Value::Object(Map::new()),
            limit,
        }
    }

    /// The size limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The current contents.
    pub fn get(&self) -> &Value {
        &self.data
    }

    /// Replaces the contents with `value`, which must be an object within the limit.
    pub fn put(&mut self, value: Value) -> Result<(), StoreError> {
        if !value.is_object() {
            return Err(StoreError::NotAnObject(kind(&value)));
        }
        self.check_size(&value)?;
        self.data = value;
        Ok(())
    }

    /// Applies `patch` as an RFC 7396 JSON merge patch. The patch must be an object (a
    /// non-object patch would replace the root with a non-object) and the result must fit
    /// the limit; otherwise nothing changes.
    pub fn patch(&mut self, patch: &Value) -> Result<(), StoreError> {
        if !patch.is_object() {
            return Err(StoreError::NotAnObject(kind(patch)));
        }
        let mut merged = self.data.clone();
        merge_patch(&mut merged, patch);
        self.check_size(&merged)?;
        self.data = merged;
        Ok(())
    }

    fn check_size(&self, value: &Value) -> Result<(), StoreError> {
        let size = json_len(value);
        if size > self.limit {
            return Err(StoreError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        Ok(())
    }
}

/// RFC 7396: object members merge recursively, `null` members delete, anything else
/// replaces the target.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(doc) = target {
        for (key, value) in members {
            if value.is_null() {
                doc.remove(key);
            } else {
                merge_patch(doc.entry(key.as_str()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Bytes of `value`'s compact JSON serialisation, counted without building it.
pub fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serialising a `Value` cannot fail: its map keys are strings and the writer never errs.
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn starts_empty() {
        let s = MmdsStore::default();
        assert_eq!(s.get(), &json!({}));
        assert_eq!(s.limit(), DEFAULT_SIZE_LIMIT);
    }

    #[test]
    fn put_replaces_and_wants_an_object() {
        let mut s = MmdsStore::new(1000);
        s.put(json!({"a": {"b": "c"}})).unwrap();
        s.put(json!({"x": 1})).unwrap();
        assert_eq!(s.get(), &json!({"x": 1}));
        let e = s.put(json!([1, 2])).unwrap_err();
        assert_eq!(e, StoreError::NotAnObject("an array"));
        assert!(e.to_string().contains("JSON object"));
        assert_eq!(s.get(), &json!({"x": 1}));
    }

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut s = MmdsStore::new(1000);
        s.put(json!({"a": "b", "c": {"d": "e", "f": "g"}, "arr": [1]}))
            .unwrap();
        s.patch(&json!({"a": "z", "c": {"f": null, "n": {"m": 1}}, "arr": {"k": 2}}))
            .unwrap();
        assert_eq!(
            s.get(),
            &json!({"a": "z", "c": {"d": "e", "n": {"m": 1}}, "arr": {"k": 2}})
        );
        assert_eq!(
            s.patch(&json!("scalar")).unwrap_err(),
            StoreError::NotAnObject("a string")
        );
        // RFC 7396 appendix examples.
        let mut t = json!({"a": [{"b": "c"}]});
        merge_patch(&mut t, &json!({"a": [1]}));
        assert_eq!(t, json!({"a": [1]}));
        let mut t = json!(["a", "b"]);
        merge_patch(&mut t, &json!({"a": "b", "c": null}));
        assert_eq!(t, json!({"a": "b"}));
        let mut t = json!({});
        merge_patch(&mut t, &json!({"a": {"bb": {"ccc": null}}}));
        assert_eq!(t, json!({"a": {"bb": {}}}));
    }

    #[test]
    fn limit_applies_to_put_and_patch() {
        let v = json!({"k": "0123456789"});
        let n = json_len(&v);
        assert_eq!(n, serde_json::to_vec(&v).unwrap().len());
        let mut s = MmdsStore::new(n);
        s.put(v.clone()).unwrap();
        let e = s.patch(&json!({"k": "0123456789a"})).unwrap_err();
        assert_eq!(
            e,
            StoreError::TooLarge {
                size: n + 1,
                limit: n
            }
        );
        let msg = e.to_string();
        assert!(msg.contains(&(n + 1).to_string()) && msg.contains(&n.to_string()));
        assert_eq!(s.get(), &v, "a refused patch leaves the store unchanged");
        assert!(matches!(
            s.put(json!({"k": "0123456789abc"})),
            Err(StoreError::TooLarge { .. })
        ));
        assert_eq!(s.get(), &v);
        s.patch(&json!({"k": null})).unwrap();
        assert_eq!(s.get(), &json!({}));
    }
}
