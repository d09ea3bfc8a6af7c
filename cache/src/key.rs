//! [`ObjKey`]: an object's place in a type's key order.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// An object's key: (namespace or `""`, name), ordered as kube-apiserver lists (by namespace,
/// then name).
///
/// One shared allocation holding both strings: cloning is a reference-count increment, which
/// matters because the persistent map behind a [`Snapshot`](crate::Snapshot) clones the keys
/// of every node it path-copies.
#[derive(Clone)]
pub struct ObjKey {
    /// Namespace then name, back to back.
    text: Arc<str>,
    /// Length of the namespace part.
    ns_len: u32,
}

impl ObjKey {
    /// The key of `name` in `namespace` (`""` for cluster-scoped objects).
    pub fn new(namespace: &str, name: &str) -> ObjKey {
        let mut text = String::with_capacity(namespace.len() + name.len());
        text.push_str(namespace);
        text.push_str(name);
        // Kubernetes names and namespaces are at most 253 bytes; saturate rather than wrap if
        // something larger ever arrives (the split is then wrong, the key still unique).
        let ns_len = u32::try_from(namespace.len()).unwrap_or(u32::MAX);
        ObjKey {
            text: text.into(),
            ns_len,
        }
    }

    fn split(&self) -> usize {
        (self.ns_len as usize).min(self.text.len())
    }

    /// The namespace (`""` for cluster-scoped objects).
    pub fn namespace(&self) -> &str {
        self.text.get(..self.split()).unwrap_or("")
    }

    /// The name.
    pub fn name(&self) -> &str {
        self.text.get(self.split()..).unwrap_or("")
    }

    /// Bytes held on the heap for this key (one allocation, shared by its clones).
    pub fn heap_size(&self) -> usize {
        2 * std::mem::size_of::<usize>() + self.text.len()
    }
}

impl PartialEq for ObjKey {
    fn eq(&self, other: &ObjKey) -> bool {
        self.ns_len == other.ns_len && self.text == other.text
    }
}

impl Eq for ObjKey {}

impl Ord for ObjKey {
    fn cmp(&self, other: &ObjKey) -> Ordering {
        (self.namespace(), self.name()).cmp(&(other.namespace(), other.name()))
    }
}

impl PartialOrd for ObjKey {
    fn partial_cmp(&self, other: &ObjKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for ObjKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.namespace().hash(state);
        self.name().hash(state);
    }
}

impl fmt::Debug for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace().is_empty() {
            f.write_str(self.name())
        } else {
            write!(f, "{}/{}", self.namespace(), self.name())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_namespace_then_name() {
        let mut keys = [
            ObjKey::new("a-b", "c"),
            ObjKey::new("a", "z"),
            ObjKey::new("", "zz"),
            ObjKey::new("a", "b"),
        ];
        keys.sort();
        let shown: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["zz", "a/b", "a/z", "a-b/c"]);
        assert_eq!(ObjKey::new("ab", "c"), ObjKey::new("ab", "c"));
        assert_ne!(ObjKey::new("ab", "c"), ObjKey::new("a", "bc"));
        assert_eq!(ObjKey::new("a", "bc").name(), "bc");
    }
}
