//! Images, instance types, the region and zone, and tags, through the router.

use super::*;

#[tokio::test(flavor = "current_thread")]
async fn images_types_regions_and_zones() {
    let w = world("catalog");
    let img = w.image();
    let (s, xml) = w
        .post(&format!("Action=DescribeImages&{V}&Owner.1=self"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(all(&xml, "imageId"), std::slice::from_ref(&img));
    assert!(xml.contains("<name>tiny &lt;&amp;&gt;</name>"), "{xml}");
    assert!(xml.contains("<imageState>available</imageState>"));
    let (_, xml) = w
        .post(&format!("Action=DescribeImages&{V}&Owner.1=amazon"))
        .await;
    assert!(all(&xml, "imageId").is_empty());
    let (_, xml) = w
        .post(&format!(
            "Action=DescribeImages&{V}&ImageId.1={img}&Filter.1.Name=name&Filter.1.Value.1=tiny*"
        ))
        .await;
    assert_eq!(all(&xml, "imageId").len(), 1);

    let (_, xml) = w.post(&format!("Action=DescribeInstanceTypes&{V}")).await;
    assert_eq!(all(&xml, "instanceType").len(), types::CATALOGUE.len());
    let (_, xml) = w
        .post(&format!(
            "Action=DescribeInstanceTypes&{V}&InstanceType.1=e1.medium"
        ))
        .await;
    assert!(
        xml.contains("<vCpuInfo><defaultVCpus>2</defaultVCpus>"),
        "{xml}"
    );
    assert!(
        xml.contains("<memoryInfo><sizeInMiB>1024</sizeInMiB></memoryInfo>"),
        "{xml}"
    );
    let (_, xml) = w
        .post(&format!("Action=DescribeInstanceTypes&{V}&Filter.1.Name=vcpu-info.default-vcpus&Filter.1.Value.1=1&MaxResults=5"))
        .await;
    assert_eq!(
        all(&xml, "instanceType"),
        ["e1.nano", "e1.micro", "e1.small"]
    );
    for (form, code, message) in [
        (
            "DescribeImages&ImageId.1=img-00000000000000000",
            "InvalidAMIID.NotFound",
            "The image id '[img-00000000000000000]' does not exist",
        ),
        (
            "DescribeInstanceTypes&InstanceType.1=t2.micro",
            "InvalidInstanceType",
            "The following supplied instance types do not exist: [t2.micro]",
        ),
    ] {
        let got = w.fails(&format!("Action={form}&{V}")).await;
        assert_eq!(got, (400, code.into(), message.into()), "{form}");
    }

    let (_, xml) = w.post(&format!("Action=DescribeRegions&{V}")).await;
    assert!(xml.contains("<regionInfo><item><regionName>ember-1</regionName><regionEndpoint>http://127.0.0.1:8788</regionEndpoint>"), "{xml}");
    let got = w
        .fails(&format!(
            "Action=DescribeRegions&{V}&RegionName.1=us-east-1"
        ))
        .await;
    assert_eq!(got.1, "InvalidParameterValue");
    let (_, xml) = w
        .post(&format!(
            "Action=DescribeAvailabilityZones&{V}&ZoneName.1=ember-1a"
        ))
        .await;
    assert!(xml.contains("<zoneName>ember-1a</zoneName><zoneId>ember1-az1</zoneId><zoneState>available</zoneState><regionName>ember-1</regionName>"), "{xml}");
    let (_, xml) = w
        .post(&format!(
            "Action=DescribeAvailabilityZones&{V}&Filter.1.Name=state&Filter.1.Value.1=impaired"
        ))
        .await;
    assert!(all(&xml, "zoneName").is_empty());
    let got = w
        .fails(&format!(
            "Action=DescribeAvailabilityZones&{V}&ZoneName.1=ember-1b"
        ))
        .await;
    assert_eq!(got.1, "InvalidParameterValue");
}

#[tokio::test(flavor = "current_thread")]
async fn tags_are_written_after_launch_and_described() {
    let w = world("tags");
    w.add("i-00000000000000001", InstanceState::Running, 1);
    w.add("i-00000000000000002", InstanceState::Running, 2);
    let (s, xml) = w
        .post(&format!("Action=CreateTags&{V}&ResourceId.1=i-00000000000000001&ResourceId.2=i-00000000000000002&Tag.1.Key=env&Tag.1.Value=prod&Tag.2.Key=bare"))
        .await;
    assert_eq!(
        (s, xml.contains("<return>true</return>")),
        (200, true),
        "{xml}"
    );
    let (_, xml) = w.post(&format!("Action=DescribeTags&{V}")).await;
    assert_eq!(all(&xml, "resourceId").len(), 6);
    assert!(xml.contains("<item><resourceId>i-00000000000000001</resourceId><resourceType>instance</resourceType><key>bare</key><value></value></item>"), "{xml}");
    let (_, xml) = w
        .post(&format!("Action=DescribeTags&{V}&Filter.1.Name=key&Filter.1.Value.1=env&Filter.2.Name=resource-id&Filter.2.Value.1=i-00000000000000002"))
        .await;
    assert_eq!(all(&xml, "value"), ["prod"]);
    let (_, page) = w
        .post(&format!("Action=DescribeTags&{V}&MaxResults=5"))
        .await;
    assert_eq!(all(&page, "resourceId").len(), 5);
    let token = one(&page, "nextToken");
    let (_, rest) = w
        .post(&format!("Action=DescribeTags&{V}&NextToken={token}"))
        .await;
    assert_eq!(all(&rest, "resourceId").len(), 1);
    // Delete: only where the value matches; with no Tag, every tag.
    w.post(&format!(
        "Action=DeleteTags&{V}&ResourceId.1=i-00000000000000001&Tag.1.Key=env&Tag.1.Value=dev"
    ))
    .await;
    assert!(w.tags("i-00000000000000001").contains_key("env"));
    w.post(&format!(
        "Action=DeleteTags&{V}&ResourceId.1=i-00000000000000001&Tag.1.Key=env"
    ))
    .await;
    assert!(!w.tags("i-00000000000000001").contains_key("env"));
    w.post(&format!(
        "Action=DeleteTags&{V}&ResourceId.1=i-00000000000000002"
    ))
    .await;
    assert!(w.tags("i-00000000000000002").is_empty());
    // An unknown instance changes nothing; too many tags neither.
    let got = w.fails(&format!("Action=CreateTags&{V}&ResourceId.1=i-00000000000000001&ResourceId.2=i-0000000000000000f&Tag.1.Key=x")).await;
    assert_eq!(got.1, "InvalidInstanceID.NotFound");
    assert!(!w.tags("i-00000000000000001").contains_key("x"));
    let many: String = (0..50)
        .map(|k| format!("&Tag.{}.Key=k{k}", k + 1))
        .collect();
    let got = w
        .fails(&format!(
            "Action=CreateTags&{V}&ResourceId.1=i-00000000000000001{many}"
        ))
        .await;
    assert_eq!(got.1, "TagLimitExceeded");
}
