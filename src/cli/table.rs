//! Plain-text tables for the terminal: left-aligned columns, two spaces
//! apart, with a header row.

pub(super) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(super) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, c) in cells.iter().enumerate().take(widths.len()) {
                if i + 1 == cells.len().min(widths.len()) {
                    out.push_str(c);
                } else {
                    let pad = widths[i] - c.chars().count();
                    out.push_str(c);
                    out.push_str(&" ".repeat(pad + 2));
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = String::new();
        out.push_str(&line(&self.header));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align() {
        let mut t = super::Table::new(&["NAME", "STATE"]);
        t.row(vec!["a-long-name".into(), "ready".into()]);
        t.row(vec!["b".into(), "claimed".into()]);
        assert_eq!(
            t.render(),
            "NAME         STATE\na-long-name  ready\nb            claimed\n"
        );
    }
}
