//! The instance actions: RunInstances, DescribeInstances, DescribeInstanceStatus,
//! Start/Stop/Reboot/TerminateInstances, GetConsoleOutput, on the domain's verbs
//! (`crate::instances`). Every id of a call is checked to exist before any is acted on.

use super::errors::Ec2Error;
use super::filter::{self, Filterable};
use super::requests::{DescribeInstances, RunInstances, StopInstances};
use super::shapes::{
    self, ConsoleXml, DeviceXml, InstanceXml, ItemsXml, ReservationXml, ReturnXml, StateChangeXml,
    StatusXml, TagXml,
};
use super::Ec2;
use crate::db::{self, Instance, Reservation};
use agent_types::{InstanceState, RunRequest};
use base64::Engine;
use std::collections::HashMap;

/// How much console output GetConsoleOutput gives (EC2's: the last 64 KiB).
pub const CONSOLE_BYTES: u64 = 64 * 1024;

/// An instance with what EC2 shows beside it.
struct Described {
    inst: Instance,
    reservation: Reservation,
}

impl Described {
    /// The order pages follow: launch time, then id.
    fn key(&self) -> String {
        format!("{:020}/{}", self.inst.launched_at.max(0), self.inst.id)
    }
}

impl Filterable for Described {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        let i = &self.inst;
        let one = |s: &str| Some(vec![s.to_string()]);
        match name {
            "instance-id" => one(&i.id),
            "instance-state-name" => one(i.state.as_str()),
            "instance-state-code" => one(&i.state.code().to_string()),
            "instance-type" => one(&i.instance_type),
            "image-id" => one(&i.image_id),
            "reservation-id" => one(&self.reservation.id),
            "private-ip-address" => one(&i.ip),
            "client-token" => Some(i.client_token.iter().cloned().collect()),
            "tag-key" => Some(i.tags.keys().cloned().collect()),
            "tag-value" => Some(i.tags.values().cloned().collect()),
            n => n
                .strip_prefix("tag:")
                .map(|k| i.tags.get(k).cloned().into_iter().collect()),
        }
    }
}

/// DescribeInstances's filters (and `tag:KEY`).
const INSTANCE_FILTERS: &[&str] = &[
    "instance-id",
    "instance-state-name",
    "instance-state-code",
    "instance-type",
    "image-id",
    "reservation-id",
    "private-ip-address",
    "client-token",
    "tag-key",
    "tag-value",
];

/// The reservation of `inst`: the recorded one, or for an instance from before
/// reservations were recorded one of its own, named after it.
fn reservation_of(inst: &Instance, all: &HashMap<String, Reservation>) -> Reservation {
    all.get(&inst.id).cloned().unwrap_or_else(|| Reservation {
        id: format!("r-{}", inst.id.trim_start_matches("i-")),
        launch_index: 0,
    })
}

impl Ec2 {
    fn zone(&self) -> &str {
        &self.agent.settings.availability_zone
    }

    /// The instance's EC2 shape.
    fn instance_xml(&self, d: &Described) -> InstanceXml {
        let i = &d.inst;
        let launched = shapes::time(i.launched_at);
        let volumes = self.agent.db(|c| db::volumes(c, &i.id)).unwrap_or_default();
        InstanceXml {
            id: i.id.clone(),
            image_id: i.image_id.clone(),
            state: i.state,
            reason: i.reason.clone(),
            launch_index: d.reservation.launch_index,
            instance_type: i.instance_type.clone(),
            launch_time: launched.clone(),
            zone: self.zone().to_string(),
            ip: i.ip.clone(),
            mac: i.mac.clone(),
            client_token: i.client_token.clone(),
            tags: i
                .tags
                .iter()
                .map(|(k, v)| TagXml {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            devices: volumes
                .iter()
                .zip(b'a'..=b'z')
                .map(|(v, letter)| DeviceXml {
                    device: format!("/dev/vd{}", char::from(letter)),
                    volume_id: v.id.clone(),
                    attached: launched.clone(),
                })
                .collect(),
        }
    }

    /// The instances with `ids` (all of them must exist), or every instance; with their
    /// reservations, in launch order.
    fn described(&self, ids: &[String]) -> Result<Vec<Described>, Ec2Error> {
        self.agent.purge();
        let all = self.agent.db(db::instances)?;
        let reservations = self.agent.db(db::reservations)?;
        let missing = filter::missing(ids, |id| all.iter().any(|i| i.id == id));
        if !missing.is_empty() {
            return Err(Ec2Error::InvalidInstanceIdNotFound(missing));
        }
        Ok(all
            .into_iter()
            .filter(|i| ids.is_empty() || ids.contains(&i.id))
            .map(|inst| Described {
                reservation: reservation_of(&inst, &reservations),
                inst,
            })
            .collect())
    }

    /// RunInstances: MaxCount if the host has room, else as many as fit down to MinCount
    /// (`InsufficientInstanceCapacity` below that); a ClientToken seen before answers
    /// that run's reservation and starts nothing.
    pub async fn run_instances(&self, r: RunInstances) -> Result<ReservationXml, Ec2Error> {
        if let Some(z) = &r.zone {
            if z != self.zone() {
                return Err(Ec2Error::invalid(format!(
                    "Placement.AvailabilityZone: '{z}' is not a zone of this region (it has '{}')",
                    self.zone()
                )));
            }
        }
        let req = RunRequest {
            image_id: r.image_id,
            instance_type: r.instance_type,
            count: Some(r.max_count),
            user_data: r.user_data,
            tags: (!r.tags.is_empty()).then_some(r.tags),
            client_token: r.client_token,
            data_volumes_mib: Vec::new(),
        };
        let made = self.agent.run_at_least(req, Some(r.min_count)).await?;
        let reservations = self.agent.db(db::reservations)?;
        let mut described: Vec<Described> = made
            .into_iter()
            .map(|inst| Described {
                reservation: reservation_of(&inst, &reservations),
                inst,
            })
            .collect();
        described.sort_by_key(|d| d.reservation.launch_index);
        let id = described
            .first()
            .map(|d| d.reservation.id.clone())
            .unwrap_or_default();
        Ok(ReservationXml {
            id,
            instances: described.iter().map(|d| self.instance_xml(d)).collect(),
        })
    }

    /// DescribeInstances: reservations of the instances asked for, filtered, one page.
    pub fn describe_instances(
        &self,
        d: DescribeInstances,
    ) -> Result<ItemsXml<ReservationXml>, Ec2Error> {
        let all = self.described(&d.ids)?;
        let kept = filter::apply(all, &d.filters, INSTANCE_FILTERS, true)?;
        let (page, next_token) =
            filter::paginate(kept, Described::key, &d.page, "DescribeInstances")?;
        // Each reservation once, in the order its first instance comes.
        let mut reservations: Vec<ReservationXml> = Vec::new();
        for item in &page {
            let xml = self.instance_xml(item);
            match reservations
                .iter_mut()
                .find(|r| r.id == item.reservation.id)
            {
                Some(r) => r.instances.push(xml),
                None => reservations.push(ReservationXml {
                    id: item.reservation.id.clone(),
                    instances: vec![xml],
                }),
            }
        }
        for r in &mut reservations {
            r.instances.sort_by_key(|i| i.launch_index);
        }
        Ok(ItemsXml {
            name: "reservationSet",
            items: reservations,
            next_token,
        })
    }

    /// DescribeInstanceStatus: running instances (every one with IncludeAllInstances).
    pub fn describe_instance_status(
        &self,
        d: DescribeInstances,
    ) -> Result<ItemsXml<StatusXml>, Ec2Error> {
        let mut all = self.described(&d.ids)?;
        if !d.include_all {
            all.retain(|x| x.inst.state == InstanceState::Running);
        }
        let zone = self.zone().to_string();
        let statuses: Vec<Status> = all
            .into_iter()
            .map(|x| Status {
                key: x.key(),
                xml: StatusXml {
                    id: x.inst.id,
                    zone: zone.clone(),
                    state: x.inst.state,
                },
            })
            .collect();
        let kept = filter::apply(statuses, &d.filters, STATUS_FILTERS, false)?;
        let (page, next_token) =
            filter::paginate(kept, |s| s.key.clone(), &d.page, "DescribeInstanceStatus")?;
        Ok(ItemsXml {
            name: "instanceStatusSet",
            items: page.into_iter().map(|s| s.xml).collect(),
            next_token,
        })
    }

    /// Checks that every id exists before any is acted on; their states now.
    /// In the order asked, each id once.
    pub(super) fn states(&self, ids: &[String]) -> Result<Vec<(String, InstanceState)>, Ec2Error> {
        let now: HashMap<String, InstanceState> = self
            .described(ids)?
            .into_iter()
            .map(|d| (d.inst.id, d.inst.state))
            .collect();
        let mut out: Vec<(String, InstanceState)> = Vec::new();
        for id in ids {
            if let (Some(state), false) = (now.get(id), out.iter().any(|(i, _)| i == id)) {
                out.push((id.clone(), *state));
            }
        }
        Ok(out)
    }

    /// StartInstances: stopped instances start (`pending`); running or pending ones are
    /// answered as they are, as EC2 does.
    pub async fn start_instances(
        &self,
        ids: Vec<String>,
    ) -> Result<ItemsXml<StateChangeXml>, Ec2Error> {
        let mut out = Vec::new();
        for (id, previous) in self.states(&ids)? {
            let current = match previous {
                InstanceState::Running | InstanceState::Pending => previous,
                _ => self.agent.start(&id).await?.state,
            };
            out.push(StateChangeXml {
                id,
                current,
                previous,
            });
        }
        Ok(changes(out))
    }

    /// StopInstances: `stopping` at once (Force kills the VMM; Hibernate saves the guest
    /// for the next start).
    pub async fn stop_instances(
        &self,
        s: StopInstances,
    ) -> Result<ItemsXml<StateChangeXml>, Ec2Error> {
        let mut out = Vec::new();
        for (id, previous) in self.states(&s.ids)? {
            let now = if s.hibernate {
                self.agent.hibernate(&id).await?
            } else {
                self.agent.stop(&id, s.force).await?
            };
            out.push(StateChangeXml {
                id,
                current: now.state,
                previous,
            });
        }
        Ok(changes(out))
    }

    /// TerminateInstances: `shutting-down` at once.
    pub async fn terminate_instances(
        &self,
        ids: Vec<String>,
    ) -> Result<ItemsXml<StateChangeXml>, Ec2Error> {
        let mut out = Vec::new();
        for (id, previous) in self.states(&ids)? {
            let now = self.agent.terminate(&id).await?;
            out.push(StateChangeXml {
                id,
                current: now.state,
                previous,
            });
        }
        Ok(changes(out))
    }

    /// RebootInstances: each running instance reboots in the background.
    pub async fn reboot_instances(&self, ids: Vec<String>) -> Result<ReturnXml, Ec2Error> {
        for (id, _) in self.states(&ids)? {
            self.agent.reboot(&id).await?;
        }
        Ok(ReturnXml)
    }

    /// GetConsoleOutput: the last 64 KiB of the serial console, base64.
    pub fn console_output(&self, id: String) -> Result<ConsoleXml, Ec2Error> {
        self.states(std::slice::from_ref(&id))?;
        let (bytes, written) = self.agent.console_bytes(&id, CONSOLE_BYTES)?;
        let at = written.unwrap_or_else(std::time::SystemTime::now);
        Ok(ConsoleXml {
            id,
            timestamp: humantime::format_rfc3339_millis(at).to_string(),
            output: base64::engine::general_purpose::STANDARD.encode(bytes),
        })
    }
}

/// A status with its page key.
struct Status {
    key: String,
    xml: StatusXml,
}

/// DescribeInstanceStatus's filters.
const STATUS_FILTERS: &[&str] = &[
    "instance-state-name",
    "instance-state-code",
    "availability-zone",
    "instance-status.status",
    "system-status.status",
];

impl Filterable for Status {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        let v = match name {
            "instance-state-name" => self.xml.state.as_str().to_string(),
            "instance-state-code" => self.xml.state.code().to_string(),
            "availability-zone" => self.xml.zone.clone(),
            "instance-status.status" | "system-status.status" => self.xml.summary().to_string(),
            _ => return None,
        };
        Some(vec![v])
    }
}

fn changes(items: Vec<StateChangeXml>) -> ItemsXml<StateChangeXml> {
    ItemsXml {
        name: "instancesSet",
        items,
        next_token: None,
    }
}
