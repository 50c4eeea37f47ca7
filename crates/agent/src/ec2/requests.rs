//! Each action's request, typed, read from its [`Params`]: the parameters emberd serves
//! (docs/ec2.md lists them), checked against EC2's rules. Ids are checked for their
//! shape here (`InvalidInstanceID.Malformed`, `InvalidAMIID.Malformed`); whether they
//! exist is the handlers' business.

use super::errors::Ec2Error;
use super::params::{filters, page, tags, Filter, Page, Params};
use base64::Engine;
use std::collections::BTreeMap;

/// The largest user data, decoded (EC2's limit).
pub const MAX_USER_DATA: usize = 16 * 1024;

/// The most instances one run may ask for.
pub const MAX_COUNT: i64 = 1000;

/// An action emberd serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `RunInstances`.
    RunInstances,
    /// `DescribeInstances`.
    DescribeInstances,
    /// `DescribeInstanceStatus`.
    DescribeInstanceStatus,
    /// `StartInstances`.
    StartInstances,
    /// `StopInstances`.
    StopInstances,
    /// `RebootInstances`.
    RebootInstances,
    /// `TerminateInstances`.
    TerminateInstances,
    /// `GetConsoleOutput`.
    GetConsoleOutput,
    /// `DescribeImages`.
    DescribeImages,
    /// `DescribeInstanceTypes`.
    DescribeInstanceTypes,
    /// `CreateTags`.
    CreateTags,
    /// `DeleteTags`.
    DeleteTags,
    /// `DescribeTags`.
    DescribeTags,
    /// `DescribeRegions`.
    DescribeRegions,
    /// `DescribeAvailabilityZones`.
    DescribeAvailabilityZones,
}

impl Action {
    /// Every action, for lookups and docs.
    pub const ALL: [Action; 15] = [
        Action::RunInstances,
        Action::DescribeInstances,
        Action::DescribeInstanceStatus,
        Action::StartInstances,
        Action::StopInstances,
        Action::RebootInstances,
        Action::TerminateInstances,
        Action::GetConsoleOutput,
        Action::DescribeImages,
        Action::DescribeInstanceTypes,
        Action::CreateTags,
        Action::DeleteTags,
        Action::DescribeTags,
        Action::DescribeRegions,
        Action::DescribeAvailabilityZones,
    ];

    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Action::RunInstances => "RunInstances",
            Action::DescribeInstances => "DescribeInstances",
            Action::DescribeInstanceStatus => "DescribeInstanceStatus",
            Action::StartInstances => "StartInstances",
            Action::StopInstances => "StopInstances",
            Action::RebootInstances => "RebootInstances",
            Action::TerminateInstances => "TerminateInstances",
            Action::GetConsoleOutput => "GetConsoleOutput",
            Action::DescribeImages => "DescribeImages",
            Action::DescribeInstanceTypes => "DescribeInstanceTypes",
            Action::CreateTags => "CreateTags",
            Action::DeleteTags => "DeleteTags",
            Action::DescribeTags => "DescribeTags",
            Action::DescribeRegions => "DescribeRegions",
            Action::DescribeAvailabilityZones => "DescribeAvailabilityZones",
        }
    }

    /// The action called `name`.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// `RunInstances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInstances {
    /// `ImageId`.
    pub image_id: String,
    /// `InstanceType` (default `e1.small`).
    pub instance_type: String,
    /// `MinCount`.
    pub min_count: u32,
    /// `MaxCount`.
    pub max_count: u32,
    /// `UserData`, decoded.
    pub user_data: Option<String>,
    /// Tags of `TagSpecification.N` with `ResourceType=instance`.
    pub tags: BTreeMap<String, String>,
    /// `ClientToken`.
    pub client_token: Option<String>,
    /// `Placement.AvailabilityZone`.
    pub zone: Option<String>,
}

/// `DescribeInstances`, and `DescribeInstanceStatus` (with `include_all`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescribeInstances {
    /// `InstanceId.N`.
    pub ids: Vec<String>,
    /// `Filter.N`.
    pub filters: Vec<Filter>,
    /// `MaxResults`, `NextToken`.
    pub page: Page,
    /// `IncludeAllInstances` (status only: else running instances alone).
    pub include_all: bool,
}

/// `StopInstances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopInstances {
    /// `InstanceId.N`.
    pub ids: Vec<String>,
    /// `Force`.
    pub force: bool,
    /// `Hibernate`.
    pub hibernate: bool,
}

/// `DescribeImages`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescribeImages {
    /// `ImageId.N`.
    pub ids: Vec<String>,
    /// `Owner.N`.
    pub owners: Vec<String>,
    /// `ExecutableBy.N`.
    pub executable_by: Vec<String>,
    /// `Filter.N`.
    pub filters: Vec<Filter>,
    /// `MaxResults`, `NextToken`.
    pub page: Page,
}

/// `DescribeInstanceTypes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescribeInstanceTypes {
    /// `InstanceType.N`.
    pub names: Vec<String>,
    /// `Filter.N`.
    pub filters: Vec<Filter>,
    /// `MaxResults`, `NextToken`.
    pub page: Page,
}

/// `CreateTags` and `DeleteTags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    /// `ResourceId.N`: instance ids.
    pub resources: Vec<String>,
    /// `Tag.N.Key`, `Tag.N.Value`.
    pub tags: Vec<(String, Option<String>)>,
}

/// `DescribeRegions` and `DescribeAvailabilityZones`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescribePlaces {
    /// `RegionName.N` or `ZoneName.N`.
    pub names: Vec<String>,
    /// `ZoneId.N`.
    pub ids: Vec<String>,
    /// `Filter.N`.
    pub filters: Vec<Filter>,
}

/// A typed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `RunInstances`.
    Run(RunInstances),
    /// `DescribeInstances`.
    Describe(DescribeInstances),
    /// `DescribeInstanceStatus`.
    Status(DescribeInstances),
    /// `StartInstances`.
    Start(Vec<String>),
    /// `StopInstances`.
    Stop(StopInstances),
    /// `RebootInstances`.
    Reboot(Vec<String>),
    /// `TerminateInstances`.
    Terminate(Vec<String>),
    /// `GetConsoleOutput`.
    Console(String),
    /// `DescribeImages`.
    Images(DescribeImages),
    /// `DescribeInstanceTypes`.
    Types(DescribeInstanceTypes),
    /// `CreateTags`.
    CreateTags(Tags),
    /// `DeleteTags`.
    DeleteTags(Tags),
    /// `DescribeTags`.
    DescribeTags(Vec<Filter>, Page),
    /// `DescribeRegions`.
    Regions(DescribePlaces),
    /// `DescribeAvailabilityZones`.
    Zones(DescribePlaces),
}

/// Whether `s` is an instance id's shape: `i-` and 8 or 17 lowercase hex digits (EC2's
/// two lengths; emberd makes 17).
pub fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("i-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17) && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Takes `InstanceId.N`; each must have an instance id's shape; at least one when
/// `required`.
fn instance_ids(p: &mut Params, required: bool) -> Result<Vec<String>, Ec2Error> {
    let ids = p.list("InstanceId");
    if required && ids.is_empty() {
        return Err(Ec2Error::MissingParameter(p.full("InstanceId.1")));
    }
    if let Some(bad) = ids.iter().find(|i| !is_instance_id(i)) {
        return Err(Ec2Error::InvalidInstanceIdMalformed(bad.clone()));
    }
    Ok(ids)
}

/// Takes a count (`MinCount`, `MaxCount`): required, 1 to [`MAX_COUNT`].
fn count(p: &mut Params, name: &str) -> Result<u32, Ec2Error> {
    let n = p
        .int(name, 1, MAX_COUNT)?
        .ok_or_else(|| Ec2Error::MissingParameter(name.into()))?;
    u32::try_from(n).map_err(|_| Ec2Error::invalid(format!("{name}: 1 to {MAX_COUNT}")))
}

/// `UserData`: base64 of at most [`MAX_USER_DATA`] bytes of UTF-8 text.
fn user_data(p: &mut Params) -> Result<Option<String>, Ec2Error> {
    let Some(b64) = p.take("UserData") else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| Ec2Error::InvalidUserData("Invalid BASE64 encoding of user data.".into()))?;
    if bytes.len() > MAX_USER_DATA {
        return Err(Ec2Error::invalid(format!(
            "UserData: decoded, at most {MAX_USER_DATA} bytes (it is {})",
            bytes.len()
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| Ec2Error::invalid("UserData: emberd takes user data that is UTF-8 text"))
}

fn run(p: &mut Params) -> Result<RunInstances, Ec2Error> {
    let image_id = p.required("ImageId")?;
    if !crate::ids::is_id(&image_id, "img") {
        return Err(Ec2Error::InvalidAmiIdMalformed(image_id));
    }
    let instance_type = p.take("InstanceType").unwrap_or_else(|| "e1.small".into());
    let min_count = count(p, "MinCount")?;
    let max_count = count(p, "MaxCount")?;
    if min_count > max_count {
        return Err(Ec2Error::invalid(format!(
            "MinCount ({min_count}) must not be greater than MaxCount ({max_count})"
        )));
    }
    let user_data = user_data(p)?;
    let mut all_tags = BTreeMap::new();
    for mut spec in p.groups("TagSpecification") {
        let rt = spec.required("ResourceType")?;
        if rt != "instance" {
            return Err(Ec2Error::invalid(format!(
                "{}: '{rt}' is not taggable here; emberd tags instances only",
                spec.full("ResourceType")
            )));
        }
        for (k, v) in tags(&mut spec, "Tag")? {
            if all_tags.insert(k.clone(), v.unwrap_or_default()).is_some() {
                return Err(Ec2Error::invalid(format!(
                    "TagSpecification: the tag key '{k}' is given twice"
                )));
            }
        }
        spec.finish()?;
    }
    if all_tags.len() > crate::instances::tags::MAX_TAGS {
        return Err(Ec2Error::invalid(format!(
            "TagSpecification: at most {} tags per instance",
            crate::instances::tags::MAX_TAGS
        )));
    }
    let client_token = p.take("ClientToken");
    if let Some(t) = &client_token {
        if t.is_empty() || t.len() > 64 || !t.is_ascii() {
            return Err(Ec2Error::invalid("ClientToken: 1 to 64 ASCII characters"));
        }
    }
    let zone = p.take("Placement.AvailabilityZone");
    Ok(RunInstances {
        image_id,
        instance_type,
        min_count,
        max_count,
        user_data,
        tags: all_tags,
        client_token,
        zone,
    })
}

fn describe(p: &mut Params, status: bool) -> Result<DescribeInstances, Ec2Error> {
    let ids = instance_ids(p, false)?;
    let filters = filters(p)?;
    let page = page(p, 5, 1000)?;
    if !ids.is_empty() && page.max_results.is_some() {
        return Err(Ec2Error::InvalidParameterCombination(
            "The parameter instancesSet cannot be used with the parameter maxResults".into(),
        ));
    }
    let include_all = if status {
        p.bool("IncludeAllInstances")?.unwrap_or(false)
    } else {
        false
    };
    Ok(DescribeInstances {
        ids,
        filters,
        page,
        include_all,
    })
}

fn resource_tags(p: &mut Params, create: bool) -> Result<Tags, Ec2Error> {
    let resources = p.list("ResourceId");
    if resources.is_empty() {
        return Err(Ec2Error::MissingParameter("ResourceId.1".into()));
    }
    for r in &resources {
        if r.starts_with("i-") && !is_instance_id(r) {
            return Err(Ec2Error::InvalidInstanceIdMalformed(r.clone()));
        }
        if !is_instance_id(r) {
            return Err(if crate::ids::is_id(r, "img") {
                Ec2Error::invalid(format!("{r}: emberd tags instances only"))
            } else {
                Ec2Error::InvalidId(r.clone())
            });
        }
    }
    let tags = tags(p, "Tag")?;
    if create && tags.is_empty() {
        return Err(Ec2Error::MissingParameter("Tag.1.Key".into()));
    }
    Ok(Tags { resources, tags })
}

/// Reads `action`'s request from `p` (`Action`, `Version` and `DryRun` already taken);
/// a parameter left over is `UnknownParameter`.
pub fn parse(action: Action, mut p: Params) -> Result<Request, Ec2Error> {
    let p = &mut p;
    let req = match action {
        Action::RunInstances => Request::Run(run(p)?),
        Action::DescribeInstances => Request::Describe(describe(p, false)?),
        Action::DescribeInstanceStatus => Request::Status(describe(p, true)?),
        Action::StartInstances => Request::Start(instance_ids(p, true)?),
        Action::StopInstances => {
            let ids = instance_ids(p, true)?;
            let force = p.bool("Force")?.unwrap_or(false);
            let hibernate = p.bool("Hibernate")?.unwrap_or(false);
            if force && hibernate {
                return Err(Ec2Error::InvalidParameterCombination(
                    "Force and Hibernate cannot be given together".into(),
                ));
            }
            Request::Stop(StopInstances {
                ids,
                force,
                hibernate,
            })
        }
        Action::RebootInstances => Request::Reboot(instance_ids(p, true)?),
        Action::TerminateInstances => Request::Terminate(instance_ids(p, true)?),
        Action::GetConsoleOutput => {
            let id = p.required("InstanceId")?;
            if !is_instance_id(&id) {
                return Err(Ec2Error::InvalidInstanceIdMalformed(id));
            }
            // emberd always answers the latest output.
            p.bool("Latest")?;
            Request::Console(id)
        }
        Action::DescribeImages => {
            let ids = p.list("ImageId");
            if let Some(bad) = ids.iter().find(|i| !crate::ids::is_id(i, "img")) {
                return Err(Ec2Error::InvalidAmiIdMalformed(bad.clone()));
            }
            p.bool("IncludeDeprecated")?;
            p.bool("IncludeDisabled")?;
            Request::Images(DescribeImages {
                ids,
                owners: p.list("Owner"),
                executable_by: p.list("ExecutableBy"),
                filters: filters(p)?,
                page: page(p, 5, 1000)?,
            })
        }
        Action::DescribeInstanceTypes => Request::Types(DescribeInstanceTypes {
            names: p.list("InstanceType"),
            filters: filters(p)?,
            page: page(p, 5, 100)?,
        }),
        Action::CreateTags => Request::CreateTags(resource_tags(p, true)?),
        Action::DeleteTags => Request::DeleteTags(resource_tags(p, false)?),
        Action::DescribeTags => Request::DescribeTags(filters(p)?, page(p, 5, 1000)?),
        Action::DescribeRegions => {
            p.bool("AllRegions")?;
            Request::Regions(DescribePlaces {
                names: p.list("RegionName"),
                ids: Vec::new(),
                filters: filters(p)?,
            })
        }
        Action::DescribeAvailabilityZones => {
            p.bool("AllAvailabilityZones")?;
            Request::Zones(DescribePlaces {
                names: p.list("ZoneName"),
                ids: p.list("ZoneId"),
                filters: filters(p)?,
            })
        }
    };
    std::mem::take(p).finish()?;
    Ok(req)
}

#[cfg(test)]
mod tests;
