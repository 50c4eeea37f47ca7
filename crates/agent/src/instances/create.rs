//! Creating instances: a run's checks, then each instance's record, address and volumes.
//! Launching them is `launch`'s job.

use super::capacity::{free_ip, free_ips, mac_for, memory_budget_mib};
use super::{Agent, AgentError};
use crate::db::{self, Image, Instance, Volume};
use crate::host;
use crate::ids;
use crate::meter;
use crate::types::{self, InstanceType};
use agent_types::{InstanceState, RunRequest};
use std::path::Path;
use std::sync::Arc;

/// The largest data volume, in MiB (1 TiB).
const MAX_DATA_VOLUME_MIB: u64 = 1 << 20;

impl Agent {
    /// Runs instances; with a client token seen before, returns that run's instances.
    /// Answers with them `pending`; each launches in the background.
    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<Vec<Instance>, AgentError> {
        self.run_at_least(req, None).await
    }

    /// [`Agent::run`] where `req.count` is the most wanted and `at_least` the fewest
    /// accepted (EC2's MaxCount and MinCount): as many as the host's memory budget and the
    /// subnet's free addresses allow, or an error if that is fewer than `at_least`.
    /// Without `at_least`, exactly `req.count`.
    pub async fn run_at_least(
        self: &Arc<Self>,
        req: RunRequest,
        at_least: Option<u32>,
    ) -> Result<Vec<Instance>, AgentError> {
        if let Some(token) = &req.client_token {
            if token.is_empty() || token.len() > 64 {
                return Err(AgentError::invalid("client_token: 1 to 64 characters"));
            }
            let seen = self.db(|c| db::instances_by_token(c, token))?;
            if !seen.is_empty() {
                return Ok(seen);
            }
        }
        let most = req.count.unwrap_or(1);
        if most == 0 {
            return Err(AgentError::invalid("count must be at least 1"));
        }
        let fewest = at_least.unwrap_or(most);
        if fewest == 0 || fewest > most {
            return Err(AgentError::invalid(format!(
                "the fewest instances accepted ({fewest}) must be from 1 to the count ({most})"
            )));
        }
        let itype =
            types::find(&req.instance_type).ok_or_else(|| AgentError::UnknownInstanceType {
                name: req.instance_type.clone(),
            })?;
        let image =
            self.db(|c| db::image(c, &req.image_id))?
                .ok_or_else(|| AgentError::UnknownImage {
                    id: req.image_id.clone(),
                })?;
        let budget = memory_budget_mib();
        let used = self.memory_in_use_mib()?;
        let left = budget.saturating_sub(used);
        let fit = u32::try_from(left / itype.memory_mib.max(1)).unwrap_or(u32::MAX);
        if fit < fewest {
            return Err(AgentError::InsufficientCapacity {
                count: fewest,
                instance_type: itype.name.to_string(),
                want_mib: itype.memory_mib * u64::from(fewest),
                left_mib: left,
            });
        }
        // Checked up front so that a run never stops half-way for want of an address.
        let free = free_ips(self.settings.subnet, &self.db(db::ips_in_use)?);
        if free < fewest {
            return Err(AgentError::AddressesExhausted);
        }
        let count = most.min(fit).min(free);
        if req
            .data_volumes_mib
            .iter()
            .any(|&m| m == 0 || m > MAX_DATA_VOLUME_MIB)
        {
            return Err(AgentError::invalid(format!(
                "data_volumes_mib: 1 to {MAX_DATA_VOLUME_MIB} each"
            )));
        }
        let reservation = ids::new_id("r").map_err(AgentError::internal)?;
        // Copying root volumes is slow file I/O: off the async threads.
        let agent = self.clone();
        let made = tokio::task::spawn_blocking(move || {
            (0..count)
                .map(|k| agent.create_instance(&image, &itype, &req, (&reservation, k)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(AgentError::internal)??;
        for inst in &made {
            self.spawn_launch(&inst.id, "launch failed");
        }
        Ok(made)
    }

    /// Writes one instance (`pending`, its meter open, number `k` of `reservation`), then
    /// copies its volumes.
    fn create_instance(
        &self,
        image: &Image,
        itype: &InstanceType,
        req: &RunRequest,
        (reservation, k): (&str, u32),
    ) -> Result<Instance, AgentError> {
        let id = ids::new_id("i").map_err(AgentError::internal)?;
        let dir = self.settings.state_dir.join("instances").join(&id);
        std::fs::create_dir_all(&dir).map_err(AgentError::internal)?;
        // The address is taken under the database lock, with the row written.
        let c = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let taken = db::ips_in_use(&c)?;
        let ip = free_ip(self.settings.subnet, &taken).ok_or(AgentError::AddressesExhausted)?;
        let inst = Instance {
            id: id.clone(),
            image_id: image.id.clone(),
            instance_type: itype.name.to_string(),
            state: InstanceState::Pending,
            reason: "user request".into(),
            pid: None,
            pid_start: None,
            dir: dir.display().to_string(),
            ip: ip.to_string(),
            tap: format!("em-{}", &id[2..14]),
            mac: mac_for(ip),
            client_token: req.client_token.clone(),
            user_data: req.user_data.clone(),
            tags: req.tags.clone().unwrap_or_default(),
            launched_at: db::now(),
            changed_at: db::now(),
            terminated_at: None,
        };
        db::insert_instance(&c, &inst)?;
        db::insert_reservation(&c, &id, reservation, k)?;
        meter::open(
            &c,
            &id,
            &itype.name,
            itype.memory_mib,
            &dir.join("metrics.jsonl"),
            meter::now_ms(),
        )?;
        drop(c);
        let vols = make_volumes(&id, &dir, image, req)?;
        self.db(|c| {
            for v in &vols {
                db::insert_volume(c, v)?;
            }
            Ok(())
        })?;
        Ok(inst)
    }
}

/// The instance's volumes in `dir`: the root copy of the image, then the data volumes;
/// and the user data's drive file.
fn make_volumes(
    id: &str,
    dir: &Path,
    image: &Image,
    req: &RunRequest,
) -> Result<Vec<Volume>, AgentError> {
    let root = dir.join("root.img");
    host::copy_file(Path::new(&image.rootfs), &root).map_err(AgentError::internal)?;
    let size = std::fs::metadata(&root)
        .map(|m| m.len() as i64)
        .unwrap_or(0);
    let mut vols = vec![Volume {
        id: ids::new_id("vol").map_err(AgentError::internal)?,
        instance_id: id.to_string(),
        path: root.display().to_string(),
        size_bytes: size,
        root: true,
    }];
    for (k, mib) in req.data_volumes_mib.iter().enumerate() {
        let p = dir.join(format!("data{k}.img"));
        host::create_sparse(&p, mib << 20).map_err(AgentError::internal)?;
        vols.push(Volume {
            id: ids::new_id("vol").map_err(AgentError::internal)?,
            instance_id: id.to_string(),
            path: p.display().to_string(),
            size_bytes: (*mib as i64) << 20,
            root: false,
        });
    }
    if let Some(ud) = &req.user_data {
        // Padded to whole sectors; the guest reads it from the drive `user_data`.
        let mut bytes = ud.as_bytes().to_vec();
        bytes.resize(bytes.len().div_ceil(512).max(1) * 512, 0);
        std::fs::write(dir.join("user-data.img"), bytes).map_err(AgentError::internal)?;
    }
    Ok(vols)
}
