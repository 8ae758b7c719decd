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
}

impl Section {
    pub fn field(self, key: &str) -> String {
        match self {
            Section::Global => format!("global.{key}"),
            Section::Service(i) => format!("service[{i}].{key}"),
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
        match section {
            Section::Global => root.get("global")?.as_table(),
            Section::Service(i) => root.get("service")?.as_array_of_tables()?.get(i),
        }
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
        let root = self.doc.as_ref()?.as_table();
        for (name, item) in root.iter() {
            match item {
                Item::Table(t) => {
                    if let Some(key) = key_covering(t, offset) {
                        return Some(format!("{name}.{key}"));
                    }
                }
                Item::ArrayOfTables(arr) => {
                    for (i, t) in arr.iter().enumerate() {
                        if let Some(key) = key_covering(t, offset) {
                            return Some(format!("{name}[{i}].{key}"));
                        }
                    }
                }
                _ => {
                    if covers(root.key(name).and_then(|k| k.span()), offset)
                        || covers(item.span(), offset)
                    {
                        return Some(name.to_owned());
                    }
                }
            }
        }
        None
    }
}

fn covers(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn key_covering(table: &Table, offset: usize) -> Option<String> {
    table.iter().find_map(|(name, item)| {
        let key_span = table.key(name).and_then(|k| k.span());
        (covers(key_span, offset) || covers(item.span(), offset)).then(|| name.to_owned())
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
    fn field_at_offset() {
        let loc = Locator::new(TEXT);
        let offset = TEXT.find("\"many\"").unwrap();
        assert_eq!(loc.field_at(offset).as_deref(), Some("service[1].backlog"));
        assert_eq!(loc.line_of_offset(offset), 9);
    }
}
