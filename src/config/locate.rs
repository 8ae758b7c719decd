//! Finds where a setting lives in the TOML text, so every error can name its line.
//!
//! Two questions: "which field is at this byte offset?" (for serde errors, which carry a span)
//! and "on which line is this field?" (for validation errors found after parsing).

use toml_edit::{ImDocument, Item, Table};

/// Which table a field belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Global,
    Service(usize),
    /// `[[service.route]]` number `.1` of service `.0`.
    Route(usize, usize),
    /// `by_identity` entry `.2` of service `.0`'s route `.1` (the service's own list when
    /// `None`).
    Identity(usize, Option<usize>, usize),
}

impl Section {
    pub fn field(self, key: &str) -> String {
        match self {
            Section::Global => format!("global.{key}"),
            Section::Service(i) => format!("service[{i}].{key}"),
            Section::Route(i, j) => format!("service[{i}].route[{j}].{key}"),
            Section::Identity(i, None, k) => format!("service[{i}].by_identity[{k}].{key}"),
            Section::Identity(i, Some(j), k) => {
                format!("service[{i}].route[{j}].by_identity[{k}].{key}")
            }
        }
    }

    /// The table this one inherits unset keys from.
    pub fn parent(self) -> Option<Section> {
        match self {
            Section::Global | Section::Service(_) => None,
            Section::Route(i, _) | Section::Identity(i, None, _) => Some(Section::Service(i)),
            Section::Identity(i, Some(j), _) => Some(Section::Route(i, j)),
        }
    }
}

/// A parsed view of the file text that answers span questions.
pub struct Locator {
    text: String,
    doc: Option<ImDocument<String>>,
}

impl Locator {
    pub fn new(text: &str) -> Self {
        Locator {
            text: text.to_owned(),
            doc: ImDocument::parse(text.to_owned()).ok(),
        }
    }

    /// 1-based line number of a byte offset.
    pub fn line_of_offset(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn table(&self, section: Section) -> Option<&Table> {
        let root = self.doc.as_ref()?.as_table();
        fn nth<'t>(t: &'t Table, name: &str, i: usize) -> Option<&'t Table> {
            t.get(name)?.as_array_of_tables()?.get(i)
        }
        match section {
            Section::Global => root.get("global")?.as_table(),
            Section::Service(i) => nth(root, "service", i),
            Section::Route(i, j) => nth(nth(root, "service", i)?, "route", j),
            Section::Identity(i, None, k) => nth(nth(root, "service", i)?, "by_identity", k),
            Section::Identity(i, Some(j), k) => {
                nth(nth(nth(root, "service", i)?, "route", j)?, "by_identity", k)
            }
        }
    }

    /// Whether `key` is written in `section`'s own table.
    pub fn has_key(&self, section: Section, key: &str) -> bool {
        self.table(section).is_some_and(|t| t.contains_key(key))
    }

    /// The section whose table actually sets `key`: `section` itself, or the nearest parent
    /// it inherits the key from; `section` when nobody sets it.
    pub fn owner(&self, section: Section, key: &str) -> Section {
        let mut at = Some(section);
        while let Some(s) = at {
            if self.has_key(s, key) {
                return s;
            }
            at = s.parent();
        }
        section
    }

    /// Line of `key` in `section`; the table header's line when the key is absent.
    pub fn line_of(&self, section: Section, key: &str) -> Option<usize> {
        let table = self.table(section)?;
        let span = table
            .key(key)
            .and_then(|k| k.span())
            .or_else(|| table.span());
        span.map(|s| self.line_of_offset(s.start))
    }

    /// The dotted field name whose key or value covers `offset`, e.g. `service[1].backlog`.
    pub fn field_at(&self, offset: usize) -> Option<String> {
        path_covering(self.doc.as_ref()?.as_table(), offset, "")
    }
}

fn covers(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

/// The dotted path of the key in `table` (or in its sub-tables, at any depth) whose key or
/// value covers `offset`.
fn path_covering(table: &Table, offset: usize, prefix: &str) -> Option<String> {
    table.iter().find_map(|(name, item)| {
        let here = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        };
        match item {
            Item::Table(t) => path_covering(t, offset, &here),
            Item::ArrayOfTables(arr) => arr
                .iter()
                .enumerate()
                .find_map(|(i, t)| path_covering(t, offset, &format!("{here}[{i}]"))),
            _ => {
                let key_span = table.key(name).and_then(|k| k.span());
                (covers(key_span, offset) || covers(item.span(), offset)).then_some(here)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[global]\nworkers = 2\n\n[[service]]\nname = \"a\"\n\n[[service]]\nname = \"b\"\nbacklog = \"many\"\n";

    #[test]
    fn lines_of_fields() {
        let loc = Locator::new(TEXT);
        assert_eq!(loc.line_of(Section::Global, "workers"), Some(2));
        assert_eq!(loc.line_of(Section::Service(1), "backlog"), Some(9));
        // Absent key: the table header's line.
        assert_eq!(loc.line_of(Section::Service(0), "cert"), Some(4));
    }

    #[test]
    fn routes_inherit_from_their_service() {
        let text = "[[service]]\nmin_version = \"1.3\"\n[[service.route]]\nsni = \"a\"\n[[service.route.by_identity]]\nbackend = \"x\"\n";
        let loc = Locator::new(text);
        let identity = Section::Identity(0, Some(0), 0);
        assert_eq!(loc.owner(identity, "backend"), identity);
        assert_eq!(loc.owner(identity, "min_version"), Section::Service(0));
        assert_eq!(loc.owner(Section::Route(0, 0), "sni"), Section::Route(0, 0));
        assert_eq!(loc.line_of(identity, "backend"), Some(6));
        assert_eq!(
            loc.field_at(text.find("\"x\"").unwrap()).as_deref(),
            Some("service[0].route[0].by_identity[0].backend")
        );
        assert_eq!(
            Section::Identity(0, Some(0), 0).field("backend"),
            "service[0].route[0].by_identity[0].backend"
        );
    }

    #[test]
    fn field_at_offset() {
        let loc = Locator::new(TEXT);
        let offset = TEXT.find("\"many\"").unwrap();
        assert_eq!(loc.field_at(offset).as_deref(), Some("service[1].backlog"));
        assert_eq!(loc.line_of_offset(offset), 9);
    }
}
