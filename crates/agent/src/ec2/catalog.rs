//! What emberd offers, as EC2 describes it: images (emberd's `img-` ids), instance types
//! (the catalogue), the one region and the one availability zone.

use super::errors::Ec2Error;
use super::filter::{self, Filterable};
use super::requests::{DescribeImages, DescribeInstanceTypes, DescribePlaces};
use super::shapes::{self, ImageXml, ItemsXml, RegionXml, TypeXml, ZoneXml, OWNER_ID};
use super::Ec2;
use crate::db;
use crate::types;

impl Filterable for ImageXml {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        let i = self;
        let v = match name {
            "image-id" => i.id.clone(),
            "name" => i.name.clone(),
            "description" => i.boot_args.clone(),
            "state" => "available".into(),
            "architecture" => shapes::architecture().into(),
            "image-type" => "machine".into(),
            "owner-id" => OWNER_ID.into(),
            "is-public" => "false".into(),
            _ => return None,
        };
        Some(vec![v])
    }
}

const IMAGE_FILTERS: &[&str] = &[
    "image-id",
    "name",
    "description",
    "state",
    "architecture",
    "image-type",
    "owner-id",
    "is-public",
];

impl Filterable for TypeXml {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        let v = match name {
            "instance-type" => self.name.clone(),
            "vcpu-info.default-vcpus" => self.vcpus.to_string(),
            "memory-info.size-in-mib" => self.memory_mib.to_string(),
            "current-generation" => "true".into(),
            "processor-info.supported-architecture" => shapes::architecture().into(),
            _ => return None,
        };
        Some(vec![v])
    }
}

const TYPE_FILTERS: &[&str] = &[
    "instance-type",
    "vcpu-info.default-vcpus",
    "memory-info.size-in-mib",
    "current-generation",
    "processor-info.supported-architecture",
];

impl Filterable for RegionXml {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        let v = match name {
            "region-name" => self.name.clone(),
            "endpoint" => self.endpoint.clone(),
            "opt-in-status" => "opt-in-not-required".into(),
            _ => return None,
        };
        Some(vec![v])
    }
}

impl Filterable for ZoneXml {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        let v = match name {
            "zone-name" => self.name.clone(),
            "zone-id" => self.id.clone(),
            "region-name" | "group-name" => self.region.clone(),
            "state" => "available".into(),
            "zone-type" => "availability-zone".into(),
            "opt-in-status" => "opt-in-not-required".into(),
            _ => return None,
        };
        Some(vec![v])
    }
}

/// Whether an `Owner.N` / `ExecutableBy.N` value names emberd's one owner (every image
/// is its own: `self`, `all` for ExecutableBy, or the owner id).
fn ours(v: &str) -> bool {
    matches!(v, "self" | "all") || v == OWNER_ID
}

impl Ec2 {
    /// DescribeImages: emberd's images (every one owned by [`OWNER_ID`]).
    pub fn describe_images(&self, d: DescribeImages) -> Result<ItemsXml<ImageXml>, Ec2Error> {
        let all = self.agent.db(db::images)?;
        let missing = filter::missing(&d.ids, |id| all.iter().any(|i| i.id == id));
        if !missing.is_empty() {
            return Err(Ec2Error::InvalidAmiIdNotFound(missing));
        }
        let owned = (d.owners.is_empty() || d.owners.iter().any(|o| ours(o)))
            && (d.executable_by.is_empty() || d.executable_by.iter().any(|o| ours(o)));
        let images: Vec<(String, ImageXml)> = all
            .into_iter()
            .filter(|i| owned && (d.ids.is_empty() || d.ids.contains(&i.id)))
            .map(|i| {
                (
                    format!("{:020}/{}", i.created_at.max(0), i.id),
                    ImageXml {
                        created: shapes::time(i.created_at),
                        id: i.id,
                        name: i.name,
                        boot_args: i.boot_args,
                    },
                )
            })
            .collect();
        let kept = filter::apply(images, &d.filters, IMAGE_FILTERS, false)?;
        let (page, next_token) =
            filter::paginate(kept, |(k, _)| k.clone(), &d.page, "DescribeImages")?;
        Ok(ItemsXml {
            name: "imagesSet",
            items: page.into_iter().map(|(_, x)| x).collect(),
            next_token,
        })
    }

    /// DescribeInstanceTypes: the catalogue, smallest first.
    pub fn describe_instance_types(
        &self,
        d: DescribeInstanceTypes,
    ) -> Result<ItemsXml<TypeXml>, Ec2Error> {
        let missing = filter::missing(&d.names, |n| types::find(n).is_some());
        if !missing.is_empty() {
            return Err(Ec2Error::InvalidInstanceType(missing));
        }
        let all: Vec<(usize, TypeXml)> = types::CATALOGUE
            .iter()
            .filter(|t| d.names.is_empty() || d.names.iter().any(|n| *n == t.name))
            .map(|t| TypeXml {
                name: t.name.to_string(),
                vcpus: t.vcpus,
                memory_mib: t.memory_mib,
            })
            .enumerate()
            .collect();
        let kept = filter::apply(all, &d.filters, TYPE_FILTERS, false)?;
        let (page, next_token) = filter::paginate(
            kept,
            |(n, _)| format!("{n:06}"),
            &d.page,
            "DescribeInstanceTypes",
        )?;
        Ok(ItemsXml {
            name: "instanceTypeSet",
            items: page.into_iter().map(|(_, t)| t).collect(),
            next_token,
        })
    }

    /// DescribeRegions: emberd's one region, its endpoint the EC2 listener.
    pub fn describe_regions(&self, d: DescribePlaces) -> Result<ItemsXml<RegionXml>, Ec2Error> {
        let region = &self.settings.region;
        if let Some(bad) = d.names.iter().find(|n| *n != region) {
            return Err(Ec2Error::invalid(format!(
                "Invalid region: {bad} (this endpoint serves {region} only)"
            )));
        }
        let all = vec![RegionXml {
            name: region.clone(),
            endpoint: self.settings.endpoint.clone(),
        }];
        let items = filter::apply(
            all,
            &d.filters,
            &["region-name", "endpoint", "opt-in-status"],
            false,
        )?;
        Ok(ItemsXml {
            name: "regionInfo",
            items,
            next_token: None,
        })
    }

    /// DescribeAvailabilityZones: emberd's one zone.
    pub fn describe_zones(&self, d: DescribePlaces) -> Result<ItemsXml<ZoneXml>, Ec2Error> {
        let zone = ZoneXml {
            name: self.zone_name().to_string(),
            id: self.zone_id(),
            region: self.settings.region.clone(),
        };
        if let Some(bad) = d.names.iter().find(|n| **n != zone.name) {
            return Err(Ec2Error::invalid(format!(
                "Invalid availability zone: [{bad}] (this region has {})",
                zone.name
            )));
        }
        if let Some(bad) = d.ids.iter().find(|n| **n != zone.id) {
            return Err(Ec2Error::invalid(format!(
                "Invalid availability zone ID: [{bad}] (this region has {})",
                zone.id
            )));
        }
        let items = filter::apply(
            vec![zone],
            &d.filters,
            &[
                "zone-name",
                "zone-id",
                "region-name",
                "group-name",
                "state",
                "zone-type",
                "opt-in-status",
            ],
            false,
        )?;
        Ok(ItemsXml {
            name: "availabilityZoneInfo",
            items,
            next_token: None,
        })
    }

    fn zone_name(&self) -> &str {
        &self.agent.settings.availability_zone
    }

    /// The zone's id, EC2-like (`ember1-az1`): the region's name without dashes.
    fn zone_id(&self) -> String {
        format!("{}-az1", self.settings.region.replace('-', ""))
    }
}
