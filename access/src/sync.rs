//! The change feed from the metaserver to the hubs: newline-delimited JSON, one [`Line`] a line.
//!
//! ```text
//! {"type":"snapshot","revision":41,"records":[{"kind":"Tenant","name":"acme"},…]}
//! {"type":"put","revision":42,"record":{"kind":"Grant","name":"devs",…}}
//! {"type":"delete","revision":43,"key":"tokens/abcdefghij01"}
//! {"type":"heartbeat","revision":43}
//! ```
//!
//! A feed starts with a snapshot (every record; it replaces whatever the reader had), then puts
//! (a record created or replaced, whole) and deletes (by key) in revision order, and heartbeats
//! while nothing changes (the reader knows it is current up to that revision). Revisions are
//! the metaserver store's and only grow within one feed; a new feed starts with a snapshot.

use serde::{Deserialize, Serialize};

use crate::model::Record;

/// One line of the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    /// Every record as of `revision`: replaces everything.
    Snapshot {
        /// The store's revision.
        revision: i64,
        /// Every record.
        records: Vec<Record>,
    },
    /// A record created or replaced.
    Put {
        /// The store's revision after the change.
        revision: i64,
        /// The record, whole.
        record: Record,
    },
    /// A record deleted.
    Delete {
        /// The store's revision after the change.
        revision: i64,
        /// The record's key ([`Record::key`]).
        key: String,
    },
    /// Nothing changed up to `revision`.
    Heartbeat {
        /// The store's current revision.
        revision: i64,
    },
}

impl Line {
    /// The line's revision.
    pub fn revision(&self) -> i64 {
        match self {
            Line::Snapshot { revision, .. }
            | Line::Put { revision, .. }
            | Line::Delete { revision, .. }
            | Line::Heartbeat { revision } => *revision,
        }
    }

    /// Reads one line (a trailing `\n` or `\r\n` is fine).
    pub fn parse(line: &[u8]) -> Result<Line, serde_json::Error> {
        serde_json::from_slice(line)
    }

    /// The line as JSON followed by `\n`.
    pub fn to_line(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Subject, Tenant};

    #[test]
    fn lines_look_as_documented_and_round_trip() {
        let lines = [
            (
                Line::Snapshot {
                    revision: 41,
                    records: vec![Record::Tenant(Tenant {
                        name: "acme".into(),
                        display_name: String::new(),
                    })],
                },
                r#"{"type":"snapshot","revision":41,"records":[{"kind":"Tenant","name":"acme","displayName":""}]}"#,
            ),
            (
                Line::Delete {
                    revision: 43,
                    key: "tokens/abcdefghij01".into(),
                },
                r#"{"type":"delete","revision":43,"key":"tokens/abcdefghij01"}"#,
            ),
            (
                Line::Heartbeat { revision: 43 },
                r#"{"type":"heartbeat","revision":43}"#,
            ),
        ];
        for (line, json) in lines {
            assert_eq!(line.to_line(), format!("{json}\n"));
            assert_eq!(
                Line::parse(format!("{json}\r\n").as_bytes()).ok(),
                Some(line)
            );
        }
        let put = r#"{"type":"put","revision":42,"record":{"kind":"Grant","name":"devs","tenant":"acme",
            "subject":{"kind":"Tenant"},"clusters":{"ids":["edge-1"]},
            "rules":[{"apiGroups":[""],"resources":["pods"],"verbs":["get"]}]}}"#;
        match Line::parse(put.as_bytes()) {
            Ok(Line::Put {
                revision: 42,
                record: Record::Grant(g),
            }) => assert_eq!(g.subject, Subject::Tenant),
            other => panic!("{other:?}"),
        }
        assert!(Line::parse(br#"{"type":"compact","revision":1}"#).is_err());
    }
}
