//! Keys that got a new name: the old one keeps working, with a note naming the new one.

use std::fmt;

use crate::Problem;

/// A key replaced by another in the same table.
#[derive(Clone, Copy, Debug)]
pub struct Renamed {
    /// The tables holding the key (`&["downstream"]`); empty for the top level.
    pub table: &'static [&'static str],
    pub old: &'static str,
    pub new: &'static str,
    /// What a number under the old name is multiplied by for the new one (`0.001` from
    /// milliseconds to seconds; `1.0` keeps the value as it is).
    pub scale: f64,
}

/// An old key found and moved to its new name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    /// Dotted, e.g. `downstream.coalesce_window_ms`.
    pub old: String,
    /// Dotted, e.g. `downstream.coalesce_window_seconds`.
    pub new: String,
}

/// `downstream.coalesce_window_ms is deprecated: use downstream.coalesce_window_seconds`
impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is deprecated: use {}", self.old, self.new)
    }
}

/// Moves every old key of `renamed` found in `root` to its new name, converting numbers by
/// `scale`. Returns what was moved, and a problem for each key set under both names or an old
/// value that is not a number (when it needs converting); such a key is left where it is.
pub fn rename_keys(root: &mut toml::Table, renamed: &[Renamed]) -> (Vec<Moved>, Vec<Problem>) {
    let mut moved = Vec::new();
    let mut problems = Vec::new();
    for r in renamed {
        let Some(table) = r
            .table
            .iter()
            .try_fold(&mut *root, |t, key| t.get_mut(*key)?.as_table_mut())
        else {
            continue;
        };
        if !table.contains_key(r.old) {
            continue;
        }
        let dotted = |key: &str| {
            r.table
                .iter()
                .copied()
                .chain([key])
                .collect::<Vec<_>>()
                .join(".")
        };
        let (old, new) = (dotted(r.old), dotted(r.new));
        if table.contains_key(r.new) {
            problems.push(Problem::about(
                old,
                format!("deprecated and replaced by {new}; set only {new}"),
            ));
            continue;
        }
        let value = &table[r.old];
        let converted = if r.scale == 1.0 {
            Some(value.clone())
        } else {
            match value {
                toml::Value::Integer(i) => Some(toml::Value::Float(*i as f64 * r.scale)),
                toml::Value::Float(f) => Some(toml::Value::Float(f * r.scale)),
                _ => None,
            }
        };
        let Some(converted) = converted else {
            problems.push(Problem::new(
                old,
                value,
                format!("must be a number (deprecated: use {new})"),
            ));
            continue;
        };
        table.remove(r.old);
        table.insert(r.new.to_owned(), converted);
        moved.push(Moved { old, new });
    }
    (moved, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Renamed = Renamed {
        table: &["downstream"],
        old: "window_ms",
        new: "window_seconds",
        scale: 0.001,
    };

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn an_old_key_moves_to_the_new_one_converted() {
        let mut t = table("[downstream]\nwindow_ms = 5\n");
        let (moved, problems) = rename_keys(&mut t, &[MS]);
        assert!(problems.is_empty());
        assert_eq!(
            moved[0].to_string(),
            "downstream.window_ms is deprecated: use downstream.window_seconds"
        );
        assert_eq!(t["downstream"]["window_seconds"].as_float(), Some(0.005));
        assert!(t["downstream"].get("window_ms").is_none());
    }

    #[test]
    fn the_new_key_alone_is_left_alone() {
        let mut t = table("[downstream]\nwindow_seconds = 0.5\n");
        let before = t.clone();
        assert_eq!(rename_keys(&mut t, &[MS]), (vec![], vec![]));
        assert_eq!(t, before);
        let mut empty = toml::Table::new();
        assert_eq!(rename_keys(&mut empty, &[MS]), (vec![], vec![]));
    }

    #[test]
    fn both_names_or_a_non_number_is_a_problem() {
        let mut t = table("[downstream]\nwindow_ms = 5\nwindow_seconds = 0.5\n");
        let (_, problems) = rename_keys(&mut t, &[MS]);
        assert!(
            problems[0].to_string().starts_with(
                "downstream.window_ms: deprecated and replaced by downstream.window_seconds"
            ),
            "{}",
            problems[0]
        );
        let mut t = table("[downstream]\nwindow_ms = \"soon\"\n");
        let (_, problems) = rename_keys(&mut t, &[MS]);
        assert_eq!(
            problems[0].to_string(),
            "downstream.window_ms = \"soon\": must be a number (deprecated: use downstream.window_seconds)"
        );
    }
}
