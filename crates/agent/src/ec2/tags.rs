//! CreateTags, DeleteTags and DescribeTags, on instances (the only resources emberd
//! tags), through the domain's `Agent::create_tags` / `delete_tags`.

use super::errors::Ec2Error;
use super::filter::{self, Filterable};
use super::params::{Filter, Page};
use super::requests::Tags;
use super::shapes::{ItemsXml, ReturnXml, TagDescriptionXml};
use super::Ec2;
use crate::db;

impl Filterable for TagDescriptionXml {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        let v = match name {
            "resource-id" => self.resource_id.clone(),
            "resource-type" => "instance".into(),
            "key" => self.key.clone(),
            "value" => self.value.clone(),
            _ => return None,
        };
        Some(vec![v])
    }
}

impl Ec2 {
    /// CreateTags: the tags set on every instance (a tag given without a value gets an
    /// empty one, as EC2 does).
    pub fn create_tags(&self, t: Tags) -> Result<ReturnXml, Ec2Error> {
        self.states(&t.resources)?;
        let tags: Vec<(String, String)> = t
            .tags
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect();
        self.agent.create_tags(&t.resources, &tags)?;
        Ok(ReturnXml)
    }

    /// DeleteTags: each key given (only where the value matches, when one is given);
    /// every tag when none is.
    pub fn delete_tags(&self, t: Tags) -> Result<ReturnXml, Ec2Error> {
        self.states(&t.resources)?;
        self.agent.delete_tags(&t.resources, &t.tags)?;
        Ok(ReturnXml)
    }

    /// DescribeTags: every instance's tags, filtered, one page (by instance, then key).
    pub fn describe_tags(
        &self,
        filters: Vec<Filter>,
        page: Page,
    ) -> Result<ItemsXml<TagDescriptionXml>, Ec2Error> {
        self.agent.purge();
        let all: Vec<TagDescriptionXml> = self
            .agent
            .db(db::instances)?
            .into_iter()
            .flat_map(|i| {
                let id = i.id;
                i.tags
                    .into_iter()
                    .map(move |(key, value)| TagDescriptionXml {
                        resource_id: id.clone(),
                        key,
                        value,
                    })
            })
            .collect();
        let kept = filter::apply(
            all,
            &filters,
            &["resource-id", "resource-type", "key", "value"],
            false,
        )?;
        let (items, next_token) = filter::paginate(
            kept,
            |t| format!("{}\n{}", t.resource_id, t.key),
            &page,
            "DescribeTags",
        )?;
        Ok(ItemsXml {
            name: "tagSet",
            items,
            next_token,
        })
    }
}
