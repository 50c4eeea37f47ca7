//! The instance actions, through the router.

use super::*;

#[tokio::test(flavor = "current_thread")]
async fn run_instances_answers_a_reservation_and_a_token_answers_it_again() {
    let w = world("run");
    let img = w.image();
    let ud = base64::engine::general_purpose::STANDARD.encode("#!/bin/sh\necho hi\n");
    let form = format!(
        "Action=RunInstances&{V}&ImageId={img}&InstanceType=e1.nano&MinCount=1&MaxCount=2\
         &UserData={}&TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=Name\
         &TagSpecification.1.Tag.1.Value=web&ClientToken=tok-1",
        auth::uri_encode(&ud, false)
    );
    let (status, xml) = w.post(&form).await;
    assert_eq!(status, 200, "{xml}");
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><RunInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>"));
    let rid = one(&xml, "reservationId");
    assert!(rid.starts_with("r-") && rid.len() == 19, "{rid}");
    let ids = all(&xml, "instanceId");
    assert_eq!(ids.len(), 2, "{xml}");
    assert!(xml.contains("<instanceState><code>0</code><name>pending</name></instanceState>"));
    assert_eq!(all(&xml, "amiLaunchIndex"), ["0", "1"]);
    assert!(xml.contains("<tagSet><item><key>Name</key><value>web</value></item></tagSet>"));
    assert!(xml.contains("<placement><availabilityZone>ember-1a</availabilityZone>"));
    assert!(xml.contains("<instanceType>e1.nano</instanceType>"));
    assert_eq!(all(&xml, "privateIpAddress").len(), 4);
    let inst = w.agent.instance(&ids[0]).unwrap();
    assert_eq!(inst.user_data.as_deref(), Some("#!/bin/sh\necho hi\n"));
    // The same token: the same reservation, nothing new.
    let (status, again) = w.post(&form).await;
    assert_eq!(status, 200);
    assert_eq!(one(&again, "reservationId"), rid);
    assert_eq!(all(&again, "instanceId"), ids);
    assert_eq!(w.agent.db(db::instances).unwrap().len(), 2);
    // More than the host holds, at least: InsufficientInstanceCapacity.
    let (s, code, msg) = w
        .fails(&format!(
        "Action=RunInstances&{V}&ImageId={img}&InstanceType=e1.xlarge&MinCount=1000&MaxCount=1000"
    ))
        .await;
    assert_eq!(
        (s, code.as_str()),
        (500, "InsufficientInstanceCapacity"),
        "{msg}"
    );
    // An unknown image, an unknown type, a zone that is not ours.
    let bad = [
        (
            "ImageId=img-00000000000000000&MinCount=1&MaxCount=1".to_string(),
            "InvalidAMIID.NotFound",
        ),
        (
            format!("ImageId={img}&InstanceType=m5.large&MinCount=1&MaxCount=1"),
            "InvalidParameterValue",
        ),
        (
            format!("ImageId={img}&MinCount=1&MaxCount=1&Placement.AvailabilityZone=us-east-1a"),
            "InvalidParameterValue",
        ),
    ];
    for (form, want) in bad {
        let (s, code, _) = w.fails(&format!("Action=RunInstances&{V}&{form}")).await;
        assert_eq!((s, code.as_str()), (400, want), "{form}");
    }
    let (_, _, msg) = w
        .fails(&format!(
            "Action=RunInstances&{V}&ImageId={img}&InstanceType=m5.large&MinCount=1&MaxCount=1"
        ))
        .await;
    assert_eq!(msg, "Invalid value 'm5.large' for InstanceType.");
    // The launches fail (no ember here) and say why.
    eventually(&w, &ids[0], InstanceState::Stopped).await;
    let (_, xml) = w
        .post(&format!(
            "Action=DescribeInstances&{V}&InstanceId.1={}",
            ids[0]
        ))
        .await;
    assert!(xml.contains("<name>stopped</name>"), "{xml}");
    assert!(
        xml.contains("<stateReason><code>Server.InternalError</code>"),
        "{xml}"
    );
    assert!(one(&xml, "reason").contains("no such file"), "{xml}");
}

#[tokio::test(flavor = "current_thread")]
async fn describe_instances_filters_and_pages() {
    let w = world("describe");
    for k in 0..7 {
        let state = if k % 2 == 0 {
            InstanceState::Running
        } else {
            InstanceState::Stopped
        };
        w.add(&format!("i-0000000000000000{k}"), state, 100 + k);
    }
    let (status, xml) = w.post(&format!("Action=DescribeInstances&{V}")).await;
    assert_eq!(status, 200);
    assert_eq!(all(&xml, "instanceId").len(), 7);
    // Instances from before reservations were recorded get one each, named after them.
    assert!(xml.contains("<reservationId>r-0000000000000000"), "{xml}");
    let filtered = |f: &'static str| {
        let w = &w;
        async move {
            let (s, xml) = w.post(&format!("Action=DescribeInstances&{V}&{f}")).await;
            assert_eq!(s, 200, "{xml}");
            all(&xml, "instanceId")
        }
    };
    assert_eq!(
        filtered("Filter.1.Name=instance-state-name&Filter.1.Value.1=stopped").await,
        [
            "i-00000000000000001",
            "i-00000000000000003",
            "i-00000000000000005"
        ]
    );
    assert_eq!(
        filtered("Filter.1.Name=tag:Name&Filter.1.Value.1=n10?&Filter.2.Name=instance-state-code&Filter.2.Value.1=16")
            .await
            .len(),
        4
    );
    assert_eq!(
        filtered("Filter.1.Name=tag-key&Filter.1.Value.1=Nam*")
            .await
            .len(),
        7
    );
    assert_eq!(
        filtered("Filter.1.Name=instance-type&Filter.1.Value.1=e1.small")
            .await
            .len(),
        0
    );
    assert_eq!(
        filtered("Filter.1.Name=image-id&Filter.1.Value.1=img-0123456789abcdef0")
            .await
            .len(),
        7
    );
    assert_eq!(
        filtered("Filter.1.Name=instance-id&Filter.1.Value.1=i-00000000000000002&Filter.1.Value.2=i-00000000000000004")
            .await
            .len(),
        2
    );
    // Pages of 5, then the rest.
    let (_, first) = w
        .post(&format!("Action=DescribeInstances&{V}&MaxResults=5"))
        .await;
    assert_eq!(all(&first, "instanceId").len(), 5);
    let token = one(&first, "nextToken");
    let (_, second) = w
        .post(&format!(
            "Action=DescribeInstances&{V}&MaxResults=5&NextToken={token}"
        ))
        .await;
    assert_eq!(
        all(&second, "instanceId"),
        ["i-00000000000000005", "i-00000000000000006"]
    );
    assert!(all(&second, "nextToken").is_empty());
    // Bad input.
    let cases = [
        (
            "InstanceId.1=i-00000000000000009",
            400,
            "InvalidInstanceID.NotFound",
            "The instance ID 'i-00000000000000009' does not exist",
        ),
        (
            "InstanceId.1=bogus",
            400,
            "InvalidInstanceID.Malformed",
            "Invalid id: \"bogus\"",
        ),
        (
            "MaxResults=3",
            400,
            "InvalidParameterValue",
            "Value (3) for parameter MaxResults is invalid. Expected: an integer from 5 to 1000.",
        ),
        (
            "InstanceId.1=i-00000000000000001&MaxResults=5",
            400,
            "InvalidParameterCombination",
            "The parameter instancesSet cannot be used with the parameter maxResults",
        ),
        (
            "Filter.1.Name=colour&Filter.1.Value.1=red",
            400,
            "InvalidParameterValue",
            "The filter 'colour' is invalid",
        ),
        (
            "NextToken=garbage",
            400,
            "InvalidNextToken",
            "The token 'garbage' is invalid",
        ),
        (
            "Colour=red",
            400,
            "UnknownParameter",
            "The parameter Colour is not recognized",
        ),
    ];
    for (form, status, code, message) in cases {
        let got = w
            .fails(&format!("Action=DescribeInstances&{V}&{form}"))
            .await;
        assert_eq!(
            got,
            (status, code.to_string(), message.to_string()),
            "{form}"
        );
    }
    let (_, xml) = w
        .post(&format!("Action=DescribeInstances&{V}&InstanceId.1=i-00000000000000009&InstanceId.2=i-0000000000000000a"))
        .await;
    assert_eq!(
        one(&xml, "Message"),
        "The instance IDs 'i-00000000000000009, i-0000000000000000a' do not exist"
    );
    // Status: running ones by default, every one with IncludeAllInstances.
    let (_, xml) = w.post(&format!("Action=DescribeInstanceStatus&{V}")).await;
    assert_eq!(all(&xml, "instanceId").len(), 4);
    assert!(xml.contains("<instanceStatus><status>ok</status><details><item><name>reachability</name><status>passed</status>"), "{xml}");
    let (_, xml) = w
        .post(&format!("Action=DescribeInstanceStatus&{V}&IncludeAllInstances=true&Filter.1.Name=instance-status.status&Filter.1.Value.1=not-applicable"))
        .await;
    assert_eq!(all(&xml, "instanceId").len(), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn verbs_answer_current_and_previous_states() {
    let w = world("verbs");
    w.add("i-00000000000000001", InstanceState::Running, 1);
    w.add("i-00000000000000002", InstanceState::Stopped, 2);
    w.add("i-00000000000000003", InstanceState::Running, 3);
    let change = |xml: &str| {
        (
            all(xml, "instanceId"),
            one(&one(xml, "currentState"), "name"),
            one(&one(xml, "previousState"), "name"),
        )
    };
    let (s, xml) = w
        .post(&format!(
            "Action=StopInstances&{V}&InstanceId.1=i-00000000000000001"
        ))
        .await;
    assert_eq!(s, 200, "{xml}");
    assert_eq!(
        change(&xml),
        (
            vec!["i-00000000000000001".into()],
            "stopping".into(),
            "running".into()
        )
    );
    assert!(xml.contains("<currentState><code>64</code><name>stopping</name></currentState><previousState><code>16</code><name>running</name></previousState>"));
    // Starting a running instance answers it as it is.
    let (_, xml) = w
        .post(&format!(
            "Action=StartInstances&{V}&InstanceId.1=i-00000000000000003"
        ))
        .await;
    assert_eq!(change(&xml).1, "running");
    let (_, xml) = w
        .post(&format!(
            "Action=StartInstances&{V}&InstanceId.1=i-00000000000000002"
        ))
        .await;
    assert_eq!(change(&xml).1, "pending");
    assert_eq!(change(&xml).2, "stopped");
    let (_, xml) = w
        .post(&format!(
            "Action=RebootInstances&{V}&InstanceId.1=i-00000000000000003"
        ))
        .await;
    assert!(xml.contains("<return>true</return>"), "{xml}");
    // Terminate, in the order asked (the stop above finished first).
    eventually(&w, "i-00000000000000001", InstanceState::Stopped).await;
    w.add("i-00000000000000006", InstanceState::Running, 6);
    let (_, xml) = w
        .post(&format!("Action=TerminateInstances&{V}&InstanceId.1=i-00000000000000006&InstanceId.2=i-00000000000000001"))
        .await;
    let (ids, current, _) = change(&xml);
    assert_eq!(ids, ["i-00000000000000006", "i-00000000000000001"]);
    assert_eq!(current, "shutting-down");
    assert_eq!(all(&xml, "currentState").len(), 2);
    assert_eq!(
        all(&one(&xml, "item"), "name"),
        ["shutting-down", "running"]
    );
    // An unknown id among known ones: nothing is done.
    let got = w.fails(&format!("Action=StopInstances&{V}&InstanceId.1=i-00000000000000002&InstanceId.2=i-0000000000000000f")).await;
    assert_eq!(got.1, "InvalidInstanceID.NotFound");
    // A terminated instance cannot be started or rebooted.
    eventually(&w, "i-00000000000000001", InstanceState::Terminated).await;
    for action in ["StartInstances", "RebootInstances"] {
        let got = w
            .fails(&format!(
                "Action={action}&{V}&InstanceId.1=i-00000000000000001"
            ))
            .await;
        assert_eq!(
            (got.0, got.1.as_str()),
            (400, "IncorrectInstanceState"),
            "{action}"
        );
    }
    // Force and Hibernate.
    w.add("i-00000000000000004", InstanceState::Running, 4);
    let (_, xml) = w
        .post(&format!(
            "Action=StopInstances&{V}&InstanceId.1=i-00000000000000004&Hibernate=true"
        ))
        .await;
    assert_eq!(change(&xml).1, "stopping");
    w.add("i-00000000000000005", InstanceState::Running, 5);
    let (_, xml) = w
        .post(&format!(
            "Action=StopInstances&{V}&InstanceId.1=i-00000000000000005&Force=true"
        ))
        .await;
    assert_eq!(change(&xml).1, "stopping");
}

#[tokio::test(flavor = "current_thread")]
async fn console_output_is_the_last_64_kib_in_base64() {
    let w = world("console");
    let inst = w.add("i-00000000000000001", InstanceState::Running, 1);
    let mut log = vec![b'x'; 70 * 1024];
    log.extend_from_slice(b"login: \x01<>&");
    std::fs::write(std::path::Path::new(&inst.dir).join("console.log"), &log).unwrap();
    let (s, xml) = w
        .post(&format!(
            "Action=GetConsoleOutput&{V}&InstanceId=i-00000000000000001&Latest=true"
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!(one(&xml, "instanceId"), "i-00000000000000001");
    assert!(one(&xml, "timestamp").ends_with('Z'));
    let out = base64::engine::general_purpose::STANDARD
        .decode(one(&xml, "output"))
        .unwrap();
    assert_eq!(out.len(), 64 * 1024);
    assert!(out.ends_with(b"login: \x01<>&"));
    let got = w
        .fails(&format!(
            "Action=GetConsoleOutput&{V}&InstanceId=i-0000000000000000f"
        ))
        .await;
    assert_eq!(got.1, "InvalidInstanceID.NotFound");
}
