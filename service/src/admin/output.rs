//! What the admin CLI prints on stdout: the server's JSON re-indented (members in the server's
//! order, values untouched), aligned tables for lists, `member  value` lines for one object.
//!
//! Invariant: nothing but the result goes to stdout; a closed pipe ends output quietly.

use std::io::Write as _;

use serde_json::Value;

/// One column of a table: header and the (dotted) member path it shows.
pub(crate) type Column = (&'static str, &'static str);

/// Writes `text` to stdout (a broken pipe is not an error worth reporting).
pub(crate) fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Writes raw bytes to stdout.
pub(crate) fn emit_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// Re-indents JSON text by two spaces without reordering members or touching values.
pub(crate) fn pretty(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = json.trim().chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|n| n.is_whitespace()) {
                    chars.next();
                }
                if chars.peek().is_some_and(|n| *n == '}' || *n == ']') {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

/// A member by dotted path (`owner.kind`), rendered for a table cell.
pub(crate) fn cell(value: &Value, path: &str) -> String {
    let mut v = value;
    for part in path.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None => return "-".into(),
        }
    }
    scalar(v)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.chars().map(|c| if c.is_control() { '?' } else { c }).collect(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        Value::Object(map) if map.is_empty() => "-".into(),
        other => other.to_string(),
    }
}

/// An aligned table of `rows` (two spaces between columns, headers in capitals).
pub(crate) fn table(columns: &[Column], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> =
        rows.iter().map(|r| columns.iter().map(|(_, path)| cell(r, path)).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            cells.iter().map(|r| r[i].chars().count()).chain([h.len()]).max().unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        let last = values.len().saturating_sub(1);
        let mut s = String::new();
        for (i, v) in values.into_iter().enumerate() {
            if i == last {
                s.push_str(&v);
            } else {
                let pad = widths[i].saturating_sub(v.chars().count()) + 2;
                s.push_str(&v);
                s.push_str(&" ".repeat(pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(columns.iter().map(|(h, _)| (*h).to_owned()).collect());
    for row in cells {
        out.push_str(&line(row));
    }
    out
}

/// `member  value` lines for one object, nested members dotted.
pub(crate) fn fields(value: &Value) -> String {
    let mut pairs = Vec::new();
    flatten("", value, &mut pairs);
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs.into_iter().map(|(k, v)| format!("{k:width$}  {v}\n")).collect()
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        Value::String(s) if s.contains('\n') => out
            .push((prefix.to_owned(), format!("({} lines, see --output json)", s.lines().count()))),
        other => out.push((prefix.to_owned(), scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_keeps_member_order_and_string_contents() {
        let text = r#"{"z":1,"a":{"s":"x, {y}: \"q\"","e":[],"o":{}},"l":[1,2]}"#;
        let out = pretty(text);
        assert!(out.find("\"z\"").unwrap() < out.find("\"a\"").unwrap());
        let reparsed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(reparsed, serde_json::from_str::<Value>(text).unwrap());
        assert!(out.contains("\"x, {y}: \\\"q\\\"\""));
        assert!(out.contains("\"e\": []"));
    }

    #[test]
    fn tables_align_columns_and_show_dashes_for_missing_members() {
        let rows = vec![
            serde_json::json!({"id": "a", "owner": {"kind": "admin"}}),
            serde_json::json!({"id": "longer-id", "owner": null}),
        ];
        let out = table(&[("ID", "id"), ("OWNER", "owner.kind")], &rows);
        assert_eq!(out, "ID         OWNER\na          admin\nlonger-id  -\n");
    }
}
