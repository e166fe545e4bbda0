//! The CNI result: one internal shape, read from and written to any
//! supported version (0.3.0 through 1.1.0).
//!
//! Differences handled here: 0.3.x and 0.4.0 carry `ips[].version`; 1.1.0
//! adds `interfaces[].mtu` (and `socketPath`/`pciID`, route `mtu`,
//! `advmss`, `priority`, `table`, `scope`, which tabby passes through when
//! it finds them in a previous result).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value, json};

use crate::config::version_at_least;
use crate::error::{CniError, CniResult, Code};

/// An interface in a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// MTU (reported from 1.1.0 on).
    pub mtu: Option<u32>,
    /// The netns path, for interfaces inside the container.
    pub sandbox: Option<String>,
    /// Fields this version of tabby does not interpret, kept for 1.1.0 output.
    pub extra: Map<String, Value>,
}

/// An address in a result.
#[derive(Debug, Clone, PartialEq)]
pub struct IpConfig {
    /// Address with prefix.
    pub address: IpNet,
    /// Default gateway.
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    pub gw: Option<IpAddr>,
    /// 1.1.0 extras (mtu, advmss, priority, table, scope), kept verbatim.
    pub extra: Map<String, Value>,
}

/// A whole result.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CniOutput {
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS, passed through.
    pub dns: Option<Value>,
}

fn decode_err(what: &str, detail: impl Into<String>) -> CniError {
    CniError::new(Code::Decode, format!("cannot decode {what}"), detail)
}

fn field_str<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

impl CniOutput {
    /// Reads a result (a `prevResult`, or a delegated IPAM plugin's output)
    /// of any supported version.
    pub fn from_json(v: &Value) -> CniResult<CniOutput> {
        let Value::Object(m) = v else {
            return Err(decode_err("result", "not a JSON object"));
        };
        let mut out = CniOutput::default();
        if let Some(ifaces) = m.get("interfaces").and_then(Value::as_array) {
            for i in ifaces {
                let Value::Object(im) = i else {
                    return Err(decode_err("result interface", i.to_string()));
                };
                let mut extra = im.clone();
                for k in ["name", "mac", "mtu", "sandbox"] {
                    extra.remove(k);
                }
                out.interfaces.push(Interface {
                    name: field_str(im, "name").unwrap_or_default().to_string(),
                    mac: field_str(im, "mac").unwrap_or_default().to_string(),
                    mtu: im.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
                    sandbox: field_str(im, "sandbox").map(str::to_string),
                    extra,
                });
            }
        }
        if let Some(ips) = m.get("ips").and_then(Value::as_array) {
            for ip in ips {
                let Value::Object(im) = ip else {
                    return Err(decode_err("result ip", ip.to_string()));
                };
                let address = field_str(im, "address")
                    .ok_or_else(|| decode_err("result ip", "missing address"))?
                    .parse::<IpNet>()
                    .map_err(|e| decode_err("result ip address", e.to_string()))?;
                let gateway = match field_str(im, "gateway") {
                    Some(g) => Some(g.parse().map_err(|_| decode_err("result gateway", g))?),
                    None => None,
                };
                out.ips.push(IpConfig {
                    address,
                    gateway,
                    interface: im
                        .get("interface")
                        .and_then(Value::as_u64)
                        .map(|i| i as usize),
                });
            }
        }
        if let Some(routes) = m.get("routes").and_then(Value::as_array) {
            for r in routes {
                let Value::Object(rm) = r else {
                    return Err(decode_err("result route", r.to_string()));
                };
                let dst = field_str(rm, "dst")
                    .ok_or_else(|| decode_err("result route", "missing dst"))?
                    .parse::<IpNet>()
                    .map_err(|e| decode_err("result route dst", e.to_string()))?;
                let gw = match field_str(rm, "gw") {
                    Some(g) => Some(g.parse().map_err(|_| decode_err("result route gw", g))?),
                    None => None,
                };
                let mut extra = rm.clone();
                extra.remove("dst");
                extra.remove("gw");
                out.routes.push(Route { dst, gw, extra });
            }
        }
        out.dns = m.get("dns").filter(|d| d.is_object()).cloned();
        Ok(out)
    }

    /// Writes the result in the shape of `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let v11 = version_at_least(version, "1.1.0");
        let v10 = version_at_least(version, "1.0.0");
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), json!(i.name));
                if !i.mac.is_empty() {
                    m.insert("mac".into(), json!(i.mac));
                }
                if let (true, Some(mtu)) = (v11, i.mtu) {
                    m.insert("mtu".into(), json!(mtu));
                }
                if let Some(s) = &i.sandbox {
                    m.insert("sandbox".into(), json!(s));
                }
                if v11 {
                    for (k, v) in &i.extra {
                        m.insert(k.clone(), v.clone());
                    }
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = Map::new();
                if !v10 {
                    let fam = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    m.insert("version".into(), json!(fam));
                }
                m.insert("address".into(), json!(ip.address.to_string()));
                if let Some(g) = ip.gateway {
                    m.insert("gateway".into(), json!(g.to_string()));
                }
                if let Some(i) = ip.interface {
                    m.insert("interface".into(), json!(i));
                }
                Value::Object(m)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(g) = r.gw {
                    m.insert("gw".into(), json!(g.to_string()));
                }
                if v11 {
                    for (k, v) in &r.extra {
                        m.insert(k.clone(), v.clone());
                    }
                }
                Value::Object(m)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        if let Some(d) = &self.dns {
            out.insert("dns".into(), d.clone());
        }
        Value::Object(out)
    }

    /// Appends `other` after this result (chaining when tabby is not the
    /// first plugin), renumbering its interface indices.
    pub fn merge(mut self, other: CniOutput) -> CniOutput {
        let base = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        self.routes.extend(other.routes);
        if other.dns.is_some() {
            self.dns = other.dns;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniOutput {
        CniOutput {
            interfaces: vec![
                Interface {
                    name: "tab0123456789ab".into(),
                    mac: "ee:ee:ee:ee:ee:ee".into(),
                    mtu: Some(1400),
                    sandbox: None,
                    extra: Map::new(),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:42:ac:11:00:02".into(),
                    mtu: Some(1400),
                    sandbox: Some("/var/run/netns/x".into()),
                    extra: Map::new(),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.0.0.5/32".parse().unwrap(),
                    gateway: Some("169.254.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/128".parse().unwrap(),
                    gateway: Some("fe80::ecee:eeff:feee:eeee".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
                extra: Map::new(),
            }],
            dns: None,
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_no_mtu() {
        let v = sample().to_json("0.3.1");
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn v1_drops_ip_version_and_v11_adds_mtu() {
        let v = sample().to_json("1.0.0");
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][1].get("mtu").is_none());
        let v = sample().to_json("1.1.0");
        assert_eq!(v["interfaces"][1]["mtu"], 1400);
        assert_eq!(v["interfaces"][1]["sandbox"], "/var/run/netns/x");
    }

    #[test]
    fn every_version_round_trips() {
        for ver in crate::config::SUPPORTED_VERSIONS {
            let mut s = sample();
            if !version_at_least(ver, "1.1.0") {
                for i in &mut s.interfaces {
                    i.mtu = None;
                }
            }
            assert_eq!(CniOutput::from_json(&s.to_json(ver)).unwrap(), s, "{ver}");
        }
    }

    #[test]
    fn merging_renumbers_interfaces() {
        let first = CniOutput::from_json(&serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "x"}],
            "ips": [{"address": "192.168.0.2/24", "interface": 0}]
        }))
        .unwrap();
        let merged = first.merge(sample());
        assert_eq!(merged.interfaces.len(), 3);
        assert_eq!(merged.ips[1].interface, Some(2));
    }

    #[test]
    fn garbage_results_are_decode_errors() {
        for bad in [
            serde_json::json!([]),
            serde_json::json!({"ips": [{"address": "nope"}]}),
            serde_json::json!({"ips": [1]}),
            serde_json::json!({"routes": [{"gw": "1.2.3.4"}]}),
        ] {
            assert_eq!(CniOutput::from_json(&bad).unwrap_err().code, Code::Decode);
        }
    }
}
