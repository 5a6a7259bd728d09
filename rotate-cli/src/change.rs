//! One vocabulary for changes, shared by `plan` output, JSON and exit code 10.

use serde::Serialize;

/// What happens (or would happen) to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Already as desired.
    Unchanged,
    /// Does not exist; created.
    Create,
    /// Exists and differs; updated.
    Update,
    /// Exists and is removed.
    Delete,
    /// Differs, but deliberately left as it is (e.g. an operator-extended policy).
    Kept,
}

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldDiff {
    /// The field (or, for text, `text`).
    pub field: String,
    /// The current value (`-` when absent).
    pub from: String,
    /// The desired value.
    pub to: String,
}

/// A change to one object: a Vault path, a file, a unit, a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// What kind.
    pub kind: ChangeKind,
    /// The object, e.g. `pki-prod/roles/agent-mtls-ncprd1` or a file path.
    pub object: String,
    /// Differing fields (for updates).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldDiff>,
    /// A remark (why kept, what is noteworthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The operator must act on it (or knowingly accept it): listed again at the end of
    /// the report.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub attention: bool,
}

impl Change {
    /// A change of `kind` to `object`.
    pub fn new(kind: ChangeKind, object: impl Into<String>) -> Self {
        Change {
            kind,
            object: object.into(),
            fields: Vec::new(),
            note: None,
            attention: false,
        }
    }

    /// With field diffs.
    #[must_use]
    pub fn fields(mut self, fields: Vec<FieldDiff>) -> Self {
        self.fields = fields;
        self
    }

    /// With a note.
    #[must_use]
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// Marked for the operator's attention.
    #[must_use]
    pub fn needs_attention(mut self) -> Self {
        self.attention = true;
        self
    }

    /// Whether this changes anything.
    pub fn is_change(&self) -> bool {
        matches!(
            self.kind,
            ChangeKind::Create | ChangeKind::Update | ChangeKind::Delete
        )
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = match self.kind {
            ChangeKind::Unchanged => "=",
            ChangeKind::Create => "+",
            ChangeKind::Update => "~",
            ChangeKind::Delete => "-",
            ChangeKind::Kept => "!",
        };
        write!(f, "{sign} {}", self.object)?;
        if let Some(n) = &self.note {
            write!(f, "  ({n})")?;
        }
        for d in &self.fields {
            write!(f, "\n      {}: {} -> {}", d.field, d.from, d.to)?;
        }
        Ok(())
    }
}
