//! Label selectors, compiled once from `metav1.LabelSelector` into a
//! normalized list of requirements, so that equal selectors written
//! differently (`matchLabels: {a: b}` or `matchExpressions: [{key: a,
//! operator: In, values: [b]}]`, keys in another order) compare equal and
//! share one address set.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels of a pod or a namespace.
pub(crate) type Labels = BTreeMap<String, String>;

/// One requirement; a selector is the AND of its requirements.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Requirement {
    /// The label is set to one of the values.
    In(String, BTreeSet<String>),
    /// The label is absent or set to none of the values.
    NotIn(String, BTreeSet<String>),
    /// The label is set (to anything).
    Exists(String),
    /// The label is absent.
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        }
    }

    fn encode(&self, out: &mut String) {
        let (tag, key, values) = match self {
            Requirement::In(k, v) => ('i', k, Some(v)),
            Requirement::NotIn(k, v) => ('n', k, Some(v)),
            Requirement::Exists(k) => ('e', k, None),
            Requirement::DoesNotExist(k) => ('d', k, None),
        };
        out.push(tag);
        encode_str(out, key);
        if let Some(values) = values {
            let _ = write!(out, "{}(", values.len());
            for v in values {
                encode_str(out, v);
            }
            out.push(')');
        }
    }
}

/// Appends `s` length-prefixed, so that no two different sequences of
/// strings encode to the same text (label values may contain anything the
/// encoding itself uses).
pub(crate) fn encode_str(out: &mut String, s: &str) {
    let _ = write!(out, "{}:{}", s.len(), s);
}

/// A compiled label selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Selector {
    /// Sorted and deduplicated; `None` when the selector is one Kubernetes
    /// would reject (unknown operator, `In` without values, `Exists` with
    /// values): it then selects nothing, the safe reading for an isolating
    /// policy and for an allowing peer alike.
    requirements: Option<Vec<Requirement>>,
}

impl Selector {
    /// Selects every object (`{}`).
    pub(crate) fn everything() -> Self {
        Selector {
            requirements: Some(Vec::new()),
        }
    }

    /// Selects nothing.
    pub(crate) fn nothing() -> Self {
        Selector { requirements: None }
    }

    /// Compiles a Kubernetes label selector.
    pub(crate) fn from_k8s(sel: &LabelSelector) -> Self {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement::In(k.clone(), BTreeSet::from([v.clone()])));
        }
        for expr in sel.match_expressions.iter().flatten() {
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let key = expr.key.clone();
            let req = match expr.operator.as_str() {
                "In" if !values.is_empty() => Requirement::In(key, values),
                "NotIn" if !values.is_empty() => Requirement::NotIn(key, values),
                "Exists" if values.is_empty() => Requirement::Exists(key),
                "DoesNotExist" if values.is_empty() => Requirement::DoesNotExist(key),
                _ => return Selector::nothing(),
            };
            reqs.push(req);
        }
        reqs.sort();
        reqs.dedup();
        Selector {
            requirements: Some(reqs),
        }
    }

    /// Whether an object with these labels is selected.
    pub(crate) fn matches(&self, labels: &Labels) -> bool {
        match &self.requirements {
            None => false,
            Some(reqs) => reqs.iter().all(|r| r.matches(labels)),
        }
    }

    /// Appends the canonical text of the selector (the input of set names).
    pub(crate) fn encode(&self, out: &mut String) {
        match &self.requirements {
            None => out.push('!'),
            Some(reqs) => {
                out.push('[');
                for r in reqs {
                    r.encode(out);
                }
                out.push(']');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(match_labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> Selector {
        Selector::from_k8s(&LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        })
    }

    #[test]
    fn operators_follow_kubernetes() {
        let a = labels(&[("app", "web"), ("tier", "front")]);
        let b = labels(&[("app", "db")]);
        let none = labels(&[]);
        let cases: Vec<(Selector, [bool; 3])> = vec![
            (sel(&[], vec![]), [true, true, true]),
            (sel(&[("app", "web")], vec![]), [true, false, false]),
            (
                sel(&[], vec![expr("app", "In", &["web", "db"])]),
                [true, true, false],
            ),
            (
                sel(&[], vec![expr("app", "NotIn", &["web"])]),
                [false, true, true],
            ),
            (
                sel(&[], vec![expr("tier", "Exists", &[])]),
                [true, false, false],
            ),
            (
                sel(&[], vec![expr("tier", "DoesNotExist", &[])]),
                [false, true, true],
            ),
            // matchLabels AND matchExpressions.
            (
                sel(&[("app", "web")], vec![expr("tier", "NotIn", &["front"])]),
                [false, false, false],
            ),
            // Selectors Kubernetes rejects select nothing.
            (
                sel(&[], vec![expr("app", "Equals", &["web"])]),
                [false, false, false],
            ),
            (
                sel(&[], vec![expr("app", "In", &[])]),
                [false, false, false],
            ),
            (
                sel(&[], vec![expr("app", "NotIn", &[])]),
                [false, false, false],
            ),
            (
                sel(&[], vec![expr("app", "Exists", &["x"])]),
                [false, false, false],
            ),
        ];
        for (i, (s, want)) in cases.iter().enumerate() {
            let got = [s.matches(&a), s.matches(&b), s.matches(&none)];
            assert_eq!(&got, want, "case {i}: {s:?}");
        }
    }

    #[test]
    fn equal_selectors_written_differently_compare_equal() {
        let x = sel(&[("a", "1"), ("b", "2")], vec![]);
        let y = sel(
            &[("b", "2")],
            vec![expr("a", "In", &["1"]), expr("b", "In", &["2"])],
        );
        assert_eq!(x, y);
        let (mut ex, mut ey) = (String::new(), String::new());
        x.encode(&mut ex);
        y.encode(&mut ey);
        assert_eq!(ex, ey);
        assert_ne!(x, Selector::everything());
        assert_eq!(sel(&[], vec![]), Selector::everything());
    }
}
