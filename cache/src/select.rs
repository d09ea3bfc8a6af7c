//! What selectors look at ([`Meta`]) and which objects a list or watch wants ([`Filter`]).

use kubehub_kapi::query::ListOptions;
use kubehub_kapi::resources::{field_selectors, field_value};
use kubehub_kapi::selector::{FieldSelector, LabelSelector};
use kubehub_kapi::Status;
use kubehub_wire::ResourceType;
use serde_json::Value;

use crate::key::ObjKey;
use crate::watch::ChangeKind;

/// The labels and selectable fields of an object, extracted once when it is stored.
///
/// Compact: all strings live in one allocation and their end offsets in another, so an
/// object's selector view costs two allocations however many labels it has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Label keys and values (alternating), then the present fields' values, back to back.
    text: Box<str>,
    /// End offset in `text` of each string.
    ends: Box<[u32]>,
    /// How many labels.
    labels: u32,
    /// The type's selectable fields.
    fields: &'static [&'static str],
    /// Bit `i` set: `fields[i]` has a value (the first 64 fields are kept).
    present: u64,
}

impl Meta {
    /// Extracts the labels and the resource's selectable fields of `obj`.
    pub fn of(group: &str, resource: &str, obj: &Value) -> Meta {
        let mut text = String::new();
        let mut ends = Vec::new();
        let mut push = |s: &str| {
            text.push_str(s);
            ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        };
        let mut labels = 0u32;
        if let Some(l) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
            for (k, v) in l {
                if let Some(v) = v.as_str() {
                    push(k);
                    push(v);
                    labels += 1;
                }
            }
        }
        let fields = field_selectors(group, resource);
        let mut present = 0u64;
        for (i, f) in fields.iter().enumerate().take(64) {
            if let Some(v) = field_value(obj, f) {
                push(&v);
                present |= 1 << i;
            }
        }
        Meta {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
            labels,
            fields,
            present,
        }
    }

    fn span(&self, i: usize) -> Option<&str> {
        let start = match i {
            0 => 0,
            _ => *self.ends.get(i - 1)? as usize,
        };
        let end = *self.ends.get(i)? as usize;
        self.text.get(start..end)
    }

    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        (0..self.labels as usize)
            .find(|i| self.span(2 * i) == Some(k))
            .and_then(|i| self.span(2 * i + 1))
    }

    /// The labels, in key order.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        (0..self.labels as usize).filter_map(|i| Some((self.span(2 * i)?, self.span(2 * i + 1)?)))
    }

    /// The value of selectable field `f` (`metadata.name` and `metadata.namespace` included).
    pub fn field(&self, f: &str) -> Option<&str> {
        let i = self.fields.iter().take(64).position(|x| *x == f)?;
        if self.present & (1 << i) == 0 {
            return None;
        }
        let rank = (self.present & ((1u64 << i) - 1)).count_ones() as usize;
        self.span(2 * self.labels as usize + rank)
    }

    /// Heap bytes this view holds.
    pub fn heap_size(&self) -> usize {
        self.text.len() + self.ends.len() * std::mem::size_of::<u32>()
    }
}

/// Which objects a list or watch wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Restrict to one namespace.
    pub namespace: Option<String>,
    /// `labelSelector`
    pub labels: LabelSelector,
    /// `fieldSelector`
    pub fields: FieldSelector,
}

/// `pods` for `pods/log`.
pub fn base_resource(resource: &str) -> &str {
    resource.split('/').next().unwrap_or(resource)
}

impl Filter {
    /// The filter of a list or watch of type `t` in `namespace` (None: all namespaces, or a
    /// cluster-scoped type), from its options; 400 for selectors kube-apiserver rejects.
    pub fn for_request(
        t: &ResourceType,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Filter, Status> {
        Ok(Filter {
            namespace: namespace.map(str::to_owned),
            labels: LabelSelector::parse(opts.label_selector.as_deref().unwrap_or(""))?,
            fields: FieldSelector::parse(
                opts.field_selector.as_deref().unwrap_or(""),
                field_selectors(&t.group, base_resource(&t.resource)),
            )?,
        })
    }

    /// Whether an object with this key and selector view is wanted.
    pub fn matches(&self, key: &ObjKey, meta: &Meta) -> bool {
        if let Some(ns) = &self.namespace {
            if key.namespace() != ns.as_str() {
                return false;
            }
        }
        self.labels.matches(|k| meta.label(k))
            && self.fields.matches(|f| match f {
                "metadata.name" => Some(key.name()),
                "metadata.namespace" => Some(key.namespace()),
                _ => meta.field(f),
            })
    }

    /// The event a watcher with this filter sees for a change of `kind` to the object at `key`
    /// (selector view `meta` after the change, `prev` before it), if any: an object that
    /// starts matching is ADDED, one that stops matching is DELETED (as kube-apiserver's watch
    /// cache does).
    pub fn translate(
        &self,
        key: &ObjKey,
        kind: ChangeKind,
        meta: &Meta,
        prev: Option<&Meta>,
    ) -> Option<ChangeKind> {
        let now = self.matches(key, meta);
        let before = prev.is_some_and(|m| self.matches(key, m));
        match kind {
            ChangeKind::Added if now => Some(ChangeKind::Added),
            ChangeKind::Deleted if before || now => Some(ChangeKind::Deleted),
            ChangeKind::Modified => match (before, now) {
                (true, true) => Some(ChangeKind::Modified),
                (false, true) => Some(ChangeKind::Added),
                (true, false) => Some(ChangeKind::Deleted),
                (false, false) => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(labels: Value) -> Meta {
        Meta::of(
            "",
            "pods",
            &json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels},
                    "spec": {"nodeName": "n1", "hostNetwork": true}, "status": {"phase": "Running"}}),
        )
    }

    #[test]
    fn compact_view_reads_back() {
        let m = meta(json!({"app": "web", "tier": "", "n": 3}));
        assert_eq!(m.label("app"), Some("web"));
        assert_eq!(m.label("tier"), Some(""));
        assert_eq!(m.label("n"), None, "non-string label values are not labels");
        assert_eq!(m.label("web"), None);
        assert_eq!(
            m.labels().collect::<Vec<_>>(),
            [("app", "web"), ("tier", "")]
        );
        assert_eq!(m.field("metadata.name"), Some("p"));
        assert_eq!(m.field("spec.nodeName"), Some("n1"));
        assert_eq!(m.field("spec.hostNetwork"), Some("true"));
        assert_eq!(m.field("status.phase"), Some("Running"));
        assert_eq!(m.field("status.podIP"), None);
        assert_eq!(m.field("spec.unknown"), None);
        assert_eq!(Meta::default().label("a"), None);
    }

    #[test]
    fn selector_transitions() {
        let key = ObjKey::new("ns", "a");
        let (web, db) = (meta(json!({"app": "web"})), meta(json!({"app": "db"})));
        let sel = |s: &str| Filter {
            labels: LabelSelector::parse(s).unwrap(),
            ..Filter::default()
        };
        let other_ns = Filter {
            namespace: Some("other".into()),
            ..Filter::default()
        };
        let t = |f: &Filter| f.translate(&key, ChangeKind::Modified, &db, Some(&web));
        assert_eq!(t(&sel("app=web")), Some(ChangeKind::Deleted));
        assert_eq!(t(&sel("app=db")), Some(ChangeKind::Added));
        assert_eq!(t(&Filter::default()), Some(ChangeKind::Modified));
        assert_eq!(t(&other_ns), None);
        let fields = Filter {
            fields: FieldSelector::parse("spec.nodeName=n1", field_selectors("", "pods")).unwrap(),
            ..Filter::default()
        };
        assert!(fields.matches(&key, &web));
    }
}
