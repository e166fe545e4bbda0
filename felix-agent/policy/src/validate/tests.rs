//! The API server's answers, field path and message, for the inputs of
//! issue 10 and the corner cases it accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn policy(spec: &str) -> NetworkPolicy {
    let text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {spec}\n"
    );
    serde_yaml::from_str(&text).unwrap()
}

fn errors(spec: &str) -> Vec<String> {
    network_policy(&policy(spec))
        .iter()
        .map(ToString::to_string)
        .collect()
}

const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

#[test]
fn each_bad_policy_of_the_issue_is_refused_with_the_api_servers_field_error() {
    let cases: [(&str, &str, &str); 7] = [
        (
            "a CIDR with an octet above 255",
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.300/8}}]}]}",
            "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.300/8\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ),
        (
            "a port above 65535",
            "{podSelector: {}, ingress: [{ports: [{port: 70000}]}]}",
            "spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
        ),
        (
            "a protocol NetworkPolicy does not have",
            "{podSelector: {}, egress: [{ports: [{protocol: ICMP, port: 1}]}]}",
            "spec.egress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
        ),
        (
            "an endPort below its port",
            "{podSelector: {}, ingress: [{ports: [{port: 8080, endPort: 80}]}]}",
            "spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`",
        ),
        (
            "a label value with a space and a '!'",
            "{podSelector: {matchLabels: {app: \"we b!\"}}}",
            &format!("spec.podSelector.matchLabels: Invalid value: \"we b!\": {LABEL_VALUE_MSG}"),
        ),
        (
            "a named port longer than 15 characters",
            "{podSelector: {}, ingress: [{ports: [{port: this-name-is-too-long}]}]}",
            "spec.ingress[0].ports[0].port: Invalid value: \"this-name-is-too-long\": must be no more than 15 characters",
        ),
        (
            "an except outside its cidr",
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`",
        ),
    ];
    for (what, spec, want) in cases {
        let got = errors(spec);
        assert_eq!(got, [want], "{what}");
    }
}

#[test]
fn the_refusal_reads_as_kubectl_shows_it() {
    let np = policy("{podSelector: {}, ingress: [{ports: [{port: 70000}]}]}");
    let e = check("NetworkPolicy", "p", network_policy(&np)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "The NetworkPolicy \"p\" is invalid: spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
    );
    let np = policy("{podSelector: {}, ingress: [{ports: [{port: 0, protocol: ICMP}]}]}");
    let e = check("NetworkPolicy", "p", network_policy(&np)).unwrap_err();
    assert_eq!(e.errors.len(), 2);
    assert!(
        e.to_string()
            .contains("is invalid: \n* spec.ingress[0].ports[0].protocol"),
        "{e}"
    );
}

#[test]
fn valid_corner_cases_are_accepted() {
    let specs = [
        "{podSelector: {}}",
        "{}",
        "{podSelector: {}, policyTypes: [Ingress, Egress], ingress: [{}], egress: [{}]}",
        "{podSelector: {}, ingress: [{ports: [{port: 1}, {port: 65535}, {port: 80, endPort: 80}, {port: 1, endPort: 65535}]}]}",
        "{podSelector: {}, ingress: [{ports: [{protocol: SCTP}, {protocol: UDP, port: 53}, {port: abcdefghijklmno}, {port: h2c}, {port: 8080-alt}, {port: x-1-y}]}]}",
        "{podSelector: {matchLabels: {app: \"\", example.com/tier: web_1.a, A-b_c.D: X}}}",
        "{podSelector: {matchExpressions: [{key: a, operator: Exists}, {key: b, operator: DoesNotExist}, {key: c, operator: In, values: [x, \"\"]}, {key: d, operator: NotIn, values: [y]}]}}",
        "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 192.168.1.1/32]}}]}]}",
        "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: \"fd00::/64\", except: [\"fd00::/65\", \"fd00::1/128\"]}}]}]}",
        "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/31, except: [10.0.0.1/32]}}, {ipBlock: {cidr: 10.9.9.9/32}}]}]}",
        "{podSelector: {}, ingress: [{from: [{podSelector: {}, namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]}",
    ];
    for spec in specs {
        assert_eq!(errors(spec), Vec::<String>::new(), "{spec}");
    }
    let long_name: NetworkPolicy = serde_yaml::from_str(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {}, namespace: {}}}\nspec: {{}}\n",
        ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join("."),
        "n".repeat(63)
    ))
    .unwrap();
    assert_eq!(network_policy(&long_name), vec![]);
}

#[test]
fn ports_follow_the_api_servers_rules() {
    let cases = [
        (
            "{port: 0}",
            vec![
                "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            ],
        ),
        (
            "{port: 80, endPort: 70000}",
            vec![
                "spec.ingress[0].ports[0].endPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ],
        ),
        (
            "{port: http, endPort: 90}",
            vec![
                "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is non-numeric",
            ],
        ),
        (
            "{endPort: 90}",
            vec![
                "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is not specified",
            ],
        ),
        (
            "{port: HTTP}",
            vec![
                "spec.ingress[0].ports[0].port: Invalid value: \"HTTP\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                "spec.ingress[0].ports[0].port: Invalid value: \"HTTP\": must contain at least one letter (a-z)",
            ],
        ),
        (
            "{port: \"8080\"}",
            vec![
                "spec.ingress[0].ports[0].port: Invalid value: \"8080\": must contain at least one letter (a-z)",
            ],
        ),
        (
            "{port: a--b}",
            vec![
                "spec.ingress[0].ports[0].port: Invalid value: \"a--b\": must not contain consecutive hyphens",
            ],
        ),
        (
            "{port: -ab}",
            vec![
                "spec.ingress[0].ports[0].port: Invalid value: \"-ab\": must not begin or end with a hyphen",
            ],
        ),
        (
            "{port: ab-}",
            vec![
                "spec.ingress[0].ports[0].port: Invalid value: \"ab-\": must not begin or end with a hyphen",
            ],
        ),
    ];
    for (port, want) in cases {
        let got = errors(&format!(
            "{{podSelector: {{}}, ingress: [{{ports: [{port}]}}]}}"
        ));
        assert_eq!(got, want, "{port}");
    }
}

#[test]
fn ip_blocks_are_checked_strictly() {
    let cases = [
        (
            "{cidr: 10.0.0.0}",
            "ipBlock.cidr: Invalid value: \"10.0.0.0\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ),
        (
            "{cidr: 10.0.0.0/33}",
            "ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ),
        (
            "{cidr: 010.0.0.0/8}",
            "ipBlock.cidr: Invalid value: \"010.0.0.0/8\": must not have leading 0s in IP or prefix length",
        ),
        (
            "{cidr: 10.0.0.0/08}",
            "ipBlock.cidr: Invalid value: \"10.0.0.0/08\": must not have leading 0s in IP or prefix length",
        ),
        (
            "{cidr: 10.0.0.1/8}",
            "ipBlock.cidr: Invalid value: \"10.0.0.1/8\": must not have bits set beyond the prefix length",
        ),
        (
            "{cidr: \"::ffff:10.0.0.0/104\"}",
            "ipBlock.cidr: Invalid value: \"::ffff:10.0.0.0/104\": must not have an IPv4-mapped IPv6 address",
        ),
        ("{cidr: \"\"}", "ipBlock.cidr: Required value"),
        (
            "{cidr: 10.0.0.0/8, except: [10.0.0.0/8]}",
            "ipBlock.except[0]: Invalid value: \"10.0.0.0/8\": must be a strict subset of `cidr`",
        ),
        (
            "{cidr: 10.0.0.0/8, except: [\"fd00::/64\"]}",
            "ipBlock.except[0]: Invalid value: \"fd00::/64\": must be a strict subset of `cidr`",
        ),
        (
            "{cidr: 10.0.0.0/8, except: [10.0.0.300/16]}",
            "ipBlock.except[0]: Invalid value: \"10.0.0.300/16\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ),
    ];
    for (block, want) in cases {
        let got = errors(&format!(
            "{{podSelector: {{}}, ingress: [{{from: [{{ipBlock: {block}}}]}}]}}"
        ));
        assert_eq!(got, [format!("spec.ingress[0].from[0].{want}")], "{block}");
    }
}

#[test]
fn peers_and_policy_types_follow_the_api_servers_rules() {
    assert_eq!(
        errors("{podSelector: {}, ingress: [{from: [{}]}]}"),
        ["spec.ingress[0].from[0]: Required value: must specify a peer"]
    );
    assert_eq!(
        errors(
            "{podSelector: {}, egress: [{to: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]}]}"
        ),
        ["spec.egress[0].to[0]: Forbidden: may not specify both ipBlock and another peer"]
    );
    assert_eq!(
        errors("{podSelector: {}, policyTypes: [Ingress, Sideways]}"),
        [
            "spec.policyTypes[1]: Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\""
        ]
    );
    assert_eq!(
        errors("{podSelector: {}, policyTypes: [Ingress, Egress, Ingress]}"),
        [
            "spec.policyTypes: Invalid value: []networking.PolicyType{\"Ingress\", \"Egress\", \"Ingress\"}: may not specify more than two policyTypes"
        ]
    );
}

#[test]
fn selector_operators_need_values_exactly_when_they_use_them() {
    let sel = |e: &str| errors(&format!("{{podSelector: {{matchExpressions: [{e}]}}}}"));
    assert_eq!(
        sel("{key: a, operator: In}"),
        [
            "spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
        ]
    );
    assert_eq!(
        sel("{key: a, operator: NotIn, values: []}"),
        [
            "spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
        ]
    );
    assert_eq!(
        sel("{key: a, operator: Exists, values: [x]}"),
        [
            "spec.podSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
        ]
    );
    assert_eq!(
        sel("{key: a, operator: Equals, values: [x]}"),
        [
            "spec.podSelector.matchExpressions[0].operator: Invalid value: \"Equals\": not a valid selector operator"
        ]
    );
    assert_eq!(
        sel("{key: a, operator: In, values: [\"we b!\"]}"),
        [format!(
            "spec.podSelector.matchExpressions[0].values[0]: Invalid value: \"we b!\": {LABEL_VALUE_MSG}"
        )]
    );
    let bad_key = sel("{key: \"a/b/c\", operator: Exists}");
    assert_eq!(bad_key.len(), 1);
    assert!(bad_key[0].starts_with("spec.podSelector.matchExpressions[0].key: Invalid value: \"a/b/c\": a qualified name must consist of"), "{bad_key:?}");
    let ns_sel = errors(
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {\"-x\": y}}}]}]}",
    );
    assert_eq!(
        ns_sel,
        [
            "spec.ingress[0].from[0].namespaceSelector.matchLabels: Invalid value: \"-x\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        ]
    );
}

#[test]
fn metadata_names_namespaces_and_labels_are_checked() {
    let np: NetworkPolicy = serde_yaml::from_str(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Bad_Name, namespace: a.b, labels: {ok: \"no way\"}}\nspec: {}\n",
    )
    .unwrap();
    let got: Vec<String> = network_policy(&np)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].starts_with(
            "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
        ),
        "{got:?}"
    );
    assert_eq!(
        got[1],
        "metadata.namespace: Invalid value: \"a.b\": must not contain dots"
    );
    assert!(
        got[2].starts_with("metadata.labels: Invalid value: \"no way\""),
        "{got:?}"
    );
    let np: NetworkPolicy = serde_yaml::from_str(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {}\nspec: {}\n",
    )
    .unwrap();
    let got: Vec<String> = network_policy(&np)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "metadata.name: Required value: name or generateName is required",
            "metadata.namespace: Required value"
        ]
    );
}

#[test]
fn pods_namespaces_and_nodes_are_checked_for_what_the_agent_uses() {
    let p: Pod = serde_yaml::from_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: \"we b!\"}}\nspec: {containers: [{name: c, ports: [{containerPort: 70000, name: HTTP, protocol: ICMP}]}]}\nstatus: {podIPs: [{ip: 10.0.0.300}]}\n",
    )
    .unwrap();
    let got: Vec<String> = pod(&p).iter().map(ToString::to_string).collect();
    let paths: Vec<&str> = got.iter().map(|e| e.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "metadata.labels",
            "spec.containers[0].ports[0].name",
            "spec.containers[0].ports[0].name",
            "spec.containers[0].ports[0].containerPort",
            "spec.containers[0].ports[0].protocol",
            "status.podIPs[0].ip"
        ],
        "{got:#?}"
    );
    let ok: Pod = serde_yaml::from_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a.b, namespace: x}\nspec: {hostNetwork: true, nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80, name: http}, {containerPort: 53, protocol: UDP}]}]}\nstatus: {podIPs: [{ip: 10.0.0.3}, {ip: \"fd00::3\"}]}\n",
    )
    .unwrap();
    assert_eq!(pod(&ok), vec![]);

    let ns: Namespace =
        serde_yaml::from_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n").unwrap();
    assert_eq!(namespace(&ns).len(), 1);
    let ns: Namespace = serde_yaml::from_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {kubernetes.io/metadata.name: x}}\n").unwrap();
    assert_eq!(namespace(&ns), vec![]);

    let n: Node = serde_yaml::from_str(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDRs: [10.244.1.0/24, 10.244.1.0/33]}\n",
    )
    .unwrap();
    let got: Vec<String> = node(&n).iter().map(ToString::to_string).collect();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("spec.podCIDRs[1]: Invalid value: \"10.244.1.0/33\""),
        "{got:?}"
    );
}

#[test]
fn values_are_quoted_as_go_quotes_them() {
    let e = FieldError::invalid(
        Path::new("a").child("b").key("k"),
        BadValue::Str("x\"y\n".into()),
        "d",
    );
    assert_eq!(e.to_string(), "a.b[k]: Invalid value: \"x\\\"y\\n\": d");
}

#[test]
fn string_rules_match_the_api_server() {
    assert!(dns1123_label(&"a".repeat(63)).is_empty());
    assert_eq!(
        dns1123_label(&"a".repeat(64)),
        ["must be no more than 63 characters"]
    );
    assert!(!dns1123_subdomain("-a").is_empty());
    assert!(dns1123_subdomain("a.b-c.d").is_empty());
    assert!(qualified_name("example.com/a").is_empty());
    assert_eq!(qualified_name("/a"), ["prefix part must be non-empty"]);
    assert!(label_value("").is_empty());
    assert_eq!(
        label_value(&"a".repeat(64)),
        ["must be no more than 63 characters"]
    );
    assert!(config_map_key("tor.password").is_empty());
    assert!(!config_map_key("a/b").is_empty());
    assert!(ip(&Path::new("x"), "fd00::1").is_ok());
    assert!(ip(&Path::new("x"), "010.0.0.1").is_err());
    assert!(ip(&Path::new("x"), "::ffff:1.2.3.4").is_err());
}
