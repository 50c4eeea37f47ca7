//! The verbs' answers and their background work, on an agent with instances but no VMMs
//! (a VMM-less instance is what a launch that never got one leaves).

use super::*;
use crate::instances::testing;
use crate::meter;
use std::time::Duration;

fn agent(name: &str) -> Arc<Agent> {
    testing::agent("verbs", name, "172.31.250.0".parse().unwrap()).0
}

/// An instance record in `state` with a directory and a meter, and no VMM.
fn add(a: &Agent, id: &str, state: InstanceState) -> Instance {
    testing::add(a, id, state, 0)
}

/// The instance once it is in `state` (background work on a loaded machine can take a
/// while: up to 30 s).
async fn eventually(a: &Agent, id: &str, state: InstanceState) -> Instance {
    for _ in 0..3000 {
        let i = a.instance(id).unwrap();
        if i.state == state {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{id} never became {state}: {:?}",
        a.instance(id).unwrap().state
    );
}

#[tokio::test(flavor = "current_thread")]
async fn stop_answers_stopping_at_once_and_stops_in_the_background() {
    let a = agent("stop");
    add(&a, "i-00000000000000001", InstanceState::Running);
    let answer = a.stop("i-00000000000000001", false).await.unwrap();
    assert_eq!(answer.state, InstanceState::Stopping);
    let done = eventually(&a, "i-00000000000000001", InstanceState::Stopped).await;
    assert_eq!(done.reason, "user request");
    // Idempotent: stopping a stopped instance returns it.
    let again = a.stop("i-00000000000000001", true).await.unwrap();
    assert_eq!(again.state, InstanceState::Stopped);
    // The time before the stop went to running, the rest to stopping.
    let (state, _) = a
        .db(|c| meter::current(c, "i-00000000000000001"))
        .unwrap()
        .unwrap();
    assert_eq!(state, InstanceState::Stopped);
}

#[tokio::test(flavor = "current_thread")]
async fn a_stopping_instance_is_returned_as_it_is() {
    let a = agent("stopping");
    add(&a, "i-00000000000000002", InstanceState::Stopping);
    let answer = a.stop("i-00000000000000002", false).await.unwrap();
    assert_eq!(answer.state, InstanceState::Stopping);
}

#[tokio::test(flavor = "current_thread")]
async fn terminate_answers_shutting_down_and_removes_everything_in_the_background() {
    let a = agent("terminate");
    let inst = add(&a, "i-00000000000000003", InstanceState::Stopped);
    let answer = a.terminate("i-00000000000000003").await.unwrap();
    assert_eq!(answer.state, InstanceState::ShuttingDown);
    // Asking again while it is under way returns it unchanged.
    let again = a.terminate("i-00000000000000003").await.unwrap();
    assert!(matches!(
        again.state,
        InstanceState::ShuttingDown | InstanceState::Terminated
    ));
    let done = eventually(&a, "i-00000000000000003", InstanceState::Terminated).await;
    assert!(done.terminated_at.is_some());
    // The directory goes right after the state is written (the last usage sample reads
    // the metrics file in it first).
    let dir = std::path::Path::new(&inst.dir);
    for _ in 0..3000 {
        if !dir.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!dir.exists(), "{} still there", dir.display());
    // A terminated instance can be neither started nor rebooted.
    let e = a.start("i-00000000000000003").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "instance i-00000000000000003 is terminated; only stopped instances can be started"
    );
    assert!(matches!(
        a.reboot("i-00000000000000003").await,
        Err(AgentError::IncorrectState { .. })
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn reboot_answers_running_at_once_and_only_running_instances_reboot() {
    let a = agent("reboot");
    add(&a, "i-00000000000000004", InstanceState::Running);
    let answer = a.reboot("i-00000000000000004").await.unwrap();
    assert_eq!(answer.state, InstanceState::Running);
    add(&a, "i-00000000000000005", InstanceState::Stopped);
    let e = a.reboot("i-00000000000000005").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "instance i-00000000000000005 is stopped; only running instances can be rebooted"
    );
    assert!(matches!(
        a.stop("i-00000000000000009", false).await,
        Err(AgentError::InstanceNotFound { .. })
    ));
}
