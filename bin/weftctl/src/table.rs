//! Output: a plain aligned table for people, or JSON for scripts.

#![allow(clippy::print_stdout)]

use serde_json::Value;

pub struct Table {
    pub head: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: &[&'static str]) -> Self {
        Table {
            head: head.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut width: Vec<usize> = self.head.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < width.len() {
                    width[i] = width[i].max(c.len());
                }
            }
        }
        let line = |cells: Vec<&str>| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    s += c;
                } else {
                    s += &format!("{c:<w$}  ", w = width[i]);
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(self.head.clone());
        for r in &self.rows {
            out += &line(r.iter().map(String::as_str).collect());
        }
        out
    }
}

/// Prints `doc` as JSON, or `table` (with an optional heading line).
pub fn emit(json: bool, doc: &Value, heading: Option<String>, table: &Table) {
    if json {
        println!("{}", serde_json::to_string_pretty(doc).unwrap_or_default());
        return;
    }
    if let Some(h) = heading {
        println!("{h}\n");
    }
    print!("{}", table.render());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new(&["NAME", "IP"]);
        t.row(vec!["a-long-name".into(), "10.0.0.1".into()]);
        t.row(vec!["b".into(), "10.0.0.2".into()]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "NAME         IP");
        assert_eq!(lines[2], "b            10.0.0.2");
    }
}
