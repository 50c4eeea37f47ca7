//! Each action's parameters: what is read, and every error path with its code and words.

use super::*;
use crate::ec2::params::decode_form;

fn req(action: Action, form: &str) -> Result<Request, Ec2Error> {
    parse(
        action,
        Params::from_pairs(decode_form(form.as_bytes()).unwrap()).unwrap(),
    )
}

fn err(action: Action, form: &str) -> (&'static str, String) {
    let e = req(action, form).unwrap_err();
    (e.code_and_status().0, e.message())
}

const IMG: &str = "img-0123456789abcdef0";
const ID: &str = "i-0123456789abcdef0";

#[test]
fn run_instances_reads_ec2s_parameters() {
    // "hello\n" in base64.
    let form = format!(
        "ImageId={IMG}&InstanceType=e1.nano&MinCount=1&MaxCount=3&UserData=aGVsbG8K\
         &TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=Name\
         &TagSpecification.1.Tag.1.Value=web&TagSpecification.1.Tag.2.Key=empty\
         &ClientToken=tok-1&Placement.AvailabilityZone=ember-1a"
    );
    let Request::Run(r) = req(Action::RunInstances, &form).unwrap() else {
        panic!("not a run");
    };
    assert_eq!(r.image_id, IMG);
    assert_eq!(r.instance_type, "e1.nano");
    assert_eq!((r.min_count, r.max_count), (1, 3));
    assert_eq!(r.user_data.as_deref(), Some("hello\n"));
    assert_eq!(r.tags.get("Name").map(String::as_str), Some("web"));
    assert_eq!(r.tags.get("empty").map(String::as_str), Some(""));
    assert_eq!(r.client_token.as_deref(), Some("tok-1"));
    assert_eq!(r.zone.as_deref(), Some("ember-1a"));
    let Request::Run(r) = req(
        Action::RunInstances,
        &format!("ImageId={IMG}&MinCount=1&MaxCount=1"),
    )
    .unwrap() else {
        panic!("not a run");
    };
    assert_eq!(r.instance_type, "e1.small");
}

#[test]
fn run_instances_errors() {
    let base = format!("ImageId={IMG}&MinCount=1&MaxCount=1");
    let cases: Vec<(String, &str, String)> = vec![
        (
            format!("ImageId={IMG}&MaxCount=1"),
            "MissingParameter",
            "The request must contain the parameter MinCount".into(),
        ),
        (
            format!("ImageId={IMG}&MinCount=1"),
            "MissingParameter",
            "The request must contain the parameter MaxCount".into(),
        ),
        (
            "MinCount=1&MaxCount=1".into(),
            "MissingParameter",
            "The request must contain the parameter ImageId".into(),
        ),
        (
            "ImageId=ami-12345678&MinCount=1&MaxCount=1".into(),
            "InvalidAMIID.Malformed",
            "Invalid id: \"ami-12345678\" (expecting \"img-...\")".into(),
        ),
        (
            format!("ImageId={IMG}&MinCount=0&MaxCount=1"),
            "InvalidParameterValue",
            "Value (0) for parameter MinCount is invalid. Expected: an integer from 1 to 1000."
                .into(),
        ),
        (
            format!("ImageId={IMG}&MinCount=x&MaxCount=1"),
            "InvalidParameterValue",
            "Value (x) for parameter MinCount is invalid. Expected: an integer from 1 to 1000."
                .into(),
        ),
        (
            format!("ImageId={IMG}&MinCount=3&MaxCount=2"),
            "InvalidParameterValue",
            "MinCount (3) must not be greater than MaxCount (2)".into(),
        ),
        (
            format!("{base}&UserData=!!!!"),
            "InvalidUserData.Malformed",
            "Invalid BASE64 encoding of user data.".into(),
        ),
        (
            // 0xff 0xfe: base64 of bytes that are not UTF-8.
            format!("{base}&UserData=__4%3D"),
            "InvalidUserData.Malformed",
            "Invalid BASE64 encoding of user data.".into(),
        ),
        (
            format!("{base}&UserData=//4%3D"),
            "InvalidParameterValue",
            "UserData: emberd takes user data that is UTF-8 text".into(),
        ),
        (
            format!("{base}&TagSpecification.1.ResourceType=volume&TagSpecification.1.Tag.1.Key=a"),
            "InvalidParameterValue",
            "TagSpecification.1.ResourceType: 'volume' is not taggable here; emberd tags instances only"
                .into(),
        ),
        (
            format!("{base}&TagSpecification.1.Tag.1.Key=a"),
            "MissingParameter",
            "The request must contain the parameter TagSpecification.1.ResourceType".into(),
        ),
        (
            format!(
                "{base}&TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=a\
                 &TagSpecification.2.ResourceType=instance&TagSpecification.2.Tag.1.Key=a"
            ),
            "InvalidParameterValue",
            "TagSpecification: the tag key 'a' is given twice".into(),
        ),
        (
            format!("{base}&TagSpecification.1.ResourceType=instance&TagSpecification.1.Colour=red"),
            "UnknownParameter",
            "The parameter TagSpecification.1.Colour is not recognized".into(),
        ),
        (
            format!("{base}&ClientToken={}", "t".repeat(65)),
            "InvalidParameterValue",
            "ClientToken: 1 to 64 ASCII characters".into(),
        ),
        (
            format!("{base}&KeyName=mine"),
            "UnknownParameter",
            "The parameter KeyName is not recognized".into(),
        ),
    ];
    for (form, code, message) in cases {
        assert_eq!(err(Action::RunInstances, &form), (code, message), "{form}");
    }
    let big = "A".repeat((MAX_USER_DATA / 3 + 1) * 4);
    let (code, message) = err(Action::RunInstances, &format!("{base}&UserData={big}"));
    assert_eq!(code, "InvalidParameterValue");
    assert!(
        message.starts_with("UserData: decoded, at most 16384 bytes"),
        "{message}"
    );
}

#[test]
fn describes_read_ids_filters_and_pages() {
    let Request::Describe(d) = req(
        Action::DescribeInstances,
        &format!("InstanceId.1={ID}&Filter.1.Name=instance-state-name&Filter.1.Value.1=running"),
    )
    .unwrap() else {
        panic!("not a describe");
    };
    assert_eq!(d.ids, [ID]);
    assert_eq!(d.filters[0].name, "instance-state-name");
    let Request::Status(d) = req(
        Action::DescribeInstanceStatus,
        "IncludeAllInstances=true&MaxResults=5&NextToken=abc",
    )
    .unwrap() else {
        panic!("not a status");
    };
    assert!(d.include_all);
    assert_eq!(d.page.max_results, Some(5));
    assert_eq!(d.page.next_token.as_deref(), Some("abc"));
    let cases = [
        (
            Action::DescribeInstances,
            format!("InstanceId.1={ID}&MaxResults=5"),
            "InvalidParameterCombination",
        ),
        (
            Action::DescribeInstances,
            "MaxResults=1001".into(),
            "InvalidParameterValue",
        ),
        (
            Action::DescribeInstances,
            "InstanceId.1=i-xyz".into(),
            "InvalidInstanceID.Malformed",
        ),
        (
            Action::DescribeInstances,
            "IncludeAllInstances=true".into(),
            "UnknownParameter",
        ),
        (
            Action::DescribeInstanceTypes,
            "MaxResults=101".into(),
            "InvalidParameterValue",
        ),
        (
            Action::DescribeImages,
            "ImageId.1=ami-1".into(),
            "InvalidAMIID.Malformed",
        ),
        (
            Action::DescribeImages,
            "Owner.1=self&Filter.1.Name=name".into(),
            "InvalidParameterValue",
        ),
        (
            Action::DescribeTags,
            "MaxResults=2".into(),
            "InvalidParameterValue",
        ),
        (
            Action::DescribeRegions,
            "AllRegions=maybe".into(),
            "InvalidParameterValue",
        ),
        (
            Action::DescribeAvailabilityZones,
            "ZoneNames.1=x".into(),
            "UnknownParameter",
        ),
    ];
    for (action, form, code) in cases {
        assert_eq!(err(action, &form).0, code, "{action:?} {form}");
    }
    let Request::Zones(z) = req(
        Action::DescribeAvailabilityZones,
        "ZoneName.1=ember-1a&ZoneId.1=ember1-az1&AllAvailabilityZones=false",
    )
    .unwrap() else {
        panic!("not zones");
    };
    assert_eq!((z.names.len(), z.ids.len()), (1, 1));
}

#[test]
fn verbs_need_well_formed_ids() {
    for action in [
        Action::StartInstances,
        Action::StopInstances,
        Action::RebootInstances,
        Action::TerminateInstances,
    ] {
        assert_eq!(
            err(action, ""),
            (
                "MissingParameter",
                "The request must contain the parameter InstanceId.1".into()
            )
        );
        assert_eq!(
            err(action, "InstanceId.1=i-NOTHEX00"),
            (
                "InvalidInstanceID.Malformed",
                "Invalid id: \"i-NOTHEX00\"".into()
            )
        );
        assert!(
            req(action, "InstanceId.1=i-0123abcd").is_ok(),
            "{action:?}: 8 digits"
        );
    }
    assert_eq!(
        err(
            Action::StopInstances,
            &format!("InstanceId.1={ID}&Force=true&Hibernate=true")
        )
        .0,
        "InvalidParameterCombination"
    );
    let Request::Stop(s) = req(
        Action::StopInstances,
        &format!("InstanceId.1={ID}&Force=true"),
    )
    .unwrap() else {
        panic!("not a stop");
    };
    assert!(s.force && !s.hibernate);
    assert_eq!(err(Action::GetConsoleOutput, "").0, "MissingParameter");
    assert_eq!(
        err(Action::GetConsoleOutput, "InstanceId=x").0,
        "InvalidInstanceID.Malformed"
    );
    assert_eq!(
        req(
            Action::GetConsoleOutput,
            &format!("InstanceId={ID}&Latest=true")
        )
        .unwrap(),
        Request::Console(ID.into())
    );
}

#[test]
fn tag_actions_take_instances_only() {
    let Request::CreateTags(t) = req(
        Action::CreateTags,
        &format!("ResourceId.1={ID}&Tag.1.Key=Name&Tag.1.Value=web&Tag.2.Key=bare"),
    )
    .unwrap() else {
        panic!("not create");
    };
    assert_eq!(t.resources, [ID]);
    assert_eq!(
        t.tags,
        vec![("Name".into(), Some("web".into())), ("bare".into(), None)]
    );
    let cases = [
        (
            Action::CreateTags,
            format!("ResourceId.1={ID}"),
            "MissingParameter",
        ),
        (
            Action::CreateTags,
            "Tag.1.Key=a".to_string(),
            "MissingParameter",
        ),
        (
            Action::CreateTags,
            "ResourceId.1=vpc-1&Tag.1.Key=a".into(),
            "InvalidID",
        ),
        (
            Action::CreateTags,
            "ResourceId.1=i-zz&Tag.1.Key=a".into(),
            "InvalidInstanceID.Malformed",
        ),
        (
            Action::CreateTags,
            format!("ResourceId.1={IMG}&Tag.1.Key=a"),
            "InvalidParameterValue",
        ),
        (Action::DeleteTags, "Tag.1.Key=a".into(), "MissingParameter"),
    ];
    for (action, form, code) in cases {
        assert_eq!(err(action, &form).0, code, "{form}");
    }
    let Request::DeleteTags(t) = req(Action::DeleteTags, &format!("ResourceId.1={ID}")).unwrap()
    else {
        panic!("not delete");
    };
    assert!(t.tags.is_empty());
}

#[test]
fn action_names_round_trip() {
    for a in Action::ALL {
        assert_eq!(Action::from_name(a.name()), Some(a));
    }
    assert_eq!(Action::from_name("runinstances"), None);
}
