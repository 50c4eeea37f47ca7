//! Instances' tags after launch (EC2's CreateTags and DeleteTags): every instance named
//! must exist, and all of them change in one transaction or none does.

use super::{Agent, AgentError};
use crate::db;
use std::collections::BTreeMap;

/// The most tags one instance may have (EC2's limit per resource).
pub const MAX_TAGS: usize = 50;

impl Agent {
    /// Sets `tags` (key, value) on every instance of `ids`, replacing values of keys they
    /// have.
    pub fn create_tags(&self, ids: &[String], tags: &[(String, String)]) -> Result<(), AgentError> {
        self.change_tags(ids, |id, t| {
            for (k, v) in tags {
                t.insert(k.clone(), v.clone());
            }
            if t.len() > MAX_TAGS {
                return Err(AgentError::TagLimit {
                    id: id.to_string(),
                    count: t.len(),
                    limit: MAX_TAGS,
                });
            }
            Ok(())
        })
    }

    /// Removes tags from every instance of `ids`: each key given, only if its value is the
    /// one given (when one is); with no keys, every tag.
    pub fn delete_tags(
        &self,
        ids: &[String],
        tags: &[(String, Option<String>)],
    ) -> Result<(), AgentError> {
        self.change_tags(ids, |_, t| {
            if tags.is_empty() {
                t.clear();
            }
            for (k, v) in tags {
                if v.as_ref().is_none_or(|v| t.get(k) == Some(v)) {
                    t.remove(k);
                }
            }
            Ok(())
        })
    }

    /// Applies `change` to each instance's tags under one lock and transaction; an unknown
    /// id (or a change that fails) changes nothing.
    fn change_tags(
        &self,
        ids: &[String],
        change: impl Fn(&str, &mut BTreeMap<String, String>) -> Result<(), AgentError>,
    ) -> Result<(), AgentError> {
        let c = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let tx = c.unchecked_transaction()?;
        for id in ids {
            let mut inst = db::instance(&tx, id)?
                .ok_or_else(|| AgentError::InstanceNotFound { id: id.clone() })?;
            change(id, &mut inst.tags)?;
            db::set_tags(&tx, id, &inst.tags)?;
        }
        tx.commit()?;
        Ok(())
    }
}
