//! The formats recognised without configuration: `key=value` pairs (a tqdm postfix),
//! Keras-style `key: value` pairs, and a JSON object or Python dict printed on one line.
//! Hand-written scanners: they run on every captured line, and a line with none of `=`,
//! `:` or `{` costs one vectorised pass over its bytes.

/// Longest metric name kept; longer keys are not metrics.
pub(crate) const MAX_NAME: usize = 64;

/// Calls `found(name, value)` for every metric the line's text carries, in order.
pub(crate) fn scan<'a>(text: &'a str, found: &mut impl FnMut(&'a str, f64)) {
    let bytes = text.as_bytes();
    if !may_hold_metrics(bytes) {
        return;
    }
    let trimmed = text.trim();
    if trimmed.starts_with('{') && trimmed.ends_with('}') {
        scan_dict(trimmed, found);
    } else {
        scan_pairs(text, found);
    }
}

/// Whether the text has a byte every format needs: `=`, `:` or `{`.
fn may_hold_metrics(text: &[u8]) -> bool {
    crate::entry::any_byte(text, |b| b == b'=' || b == b':' || b == b'{')
}

/// The position of the next `=` or `:` at or after `from`. Skips 16-byte blocks that hold
/// neither with one branch-free test (most bytes of a log line).
fn next_separator(bytes: &[u8], mut from: usize) -> Option<usize> {
    let hit = |b: u8| (b == b'=') | (b == b':');
    while from + 16 <= bytes.len() {
        let block: &[u8; 16] = bytes[from..from + 16].try_into().expect("16 bytes");
        if block.iter().fold(false, |any, &b| any | hit(b)) {
            break;
        }
        from += 16;
    }
    (from..bytes.len()).find(|&i| hit(bytes[i]))
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-')
}

/// `key=value` and `key: value`. The key is a word (letters, digits, `_ . / -`, starting
/// with a letter) right before `=` (spaces allowed around it) or right before `:` followed
/// by a space; the value is a whole number token.
fn scan_pairs<'a>(text: &'a str, found: &mut impl FnMut(&'a str, f64)) {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = next_separator(bytes, from) {
        from = i + 1;
        let b = bytes[i];
        let value_at = match b {
            b'=' => i + 1,
            // `12:30:01`, `http://` and `a:b` are not pairs: Keras puts a space after `:`.
            b':' if bytes.get(i + 1) == Some(&b' ') => i + 1,
            _ => continue,
        };
        let mut key_end = i;
        if b == b'=' {
            while key_end > 0 && bytes[key_end - 1] == b' ' {
                key_end -= 1;
            }
        }
        let mut key_start = key_end;
        while key_start > 0 && is_key_byte(bytes[key_start - 1]) {
            key_start -= 1;
        }
        // A key starts with a letter (trailing dashes of `- loss` are not part of it).
        while key_start < key_end && !bytes[key_start].is_ascii_alphabetic() {
            key_start += 1;
        }
        if key_start == key_end || key_end - key_start > MAX_NAME {
            continue;
        }
        let mut v = value_at;
        while v < bytes.len() && bytes[v] == b' ' {
            v += 1;
        }
        if let Some(value) = number_at(bytes, v) {
            found(&text[key_start..key_end], value);
        }
    }
}

/// `{"loss": 1.2, "epoch": 0.1}` or `{'loss': 1.2, 'epoch': 0.1}`: every quoted key whose
/// value is a number (nested objects included; strings, lists, `None` skipped).
fn scan_dict<'a>(text: &'a str, found: &mut impl FnMut(&'a str, f64)) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let quote = bytes[i];
        if quote != b'"' && quote != b'\'' {
            i += 1;
            continue;
        }
        let start = i + 1;
        let Some(len) = bytes[start..].iter().position(|&b| b == quote) else {
            return;
        };
        let end = start + len;
        i = end + 1;
        let mut v = i;
        while v < bytes.len() && bytes[v] == b' ' {
            v += 1;
        }
        if bytes.get(v) != Some(&b':') {
            continue; // a string value, not a key
        }
        v += 1;
        while v < bytes.len() && bytes[v] == b' ' {
            v += 1;
        }
        let key = &text[start..end];
        let key_ok = !key.is_empty() && key.len() <= MAX_NAME && key.bytes().all(is_key_byte);
        if let (true, Some(value)) = (key_ok, number_at(bytes, v)) {
            found(key, value);
        }
    }
}

/// The number that starts at `at` and ends at a separator: `-1.5e-3`, `42`, `.5`, `95%`
/// (the number, 95). `nan`, `inf`, `3/10`, `2.1.0`, `10.0.0.1`, `12:30`, `3s` are not.
pub(crate) fn number_at(bytes: &[u8], at: usize) -> Option<f64> {
    let mut i = at;
    let digits = |i: &mut usize| {
        let from = *i;
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - from
    };
    if matches!(bytes.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let mut n = digits(&mut i);
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        n += digits(&mut i);
    }
    if n == 0 {
        return None;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(bytes.get(j), Some(b'-' | b'+')) {
            j += 1;
        }
        if digits(&mut j) > 0 {
            i = j;
        }
    }
    let end = i;
    if bytes.get(i) == Some(&b'%') {
        i += 1;
    }
    let separated = match bytes.get(i) {
        None => true,
        Some(b) => b.is_ascii_whitespace() || matches!(b, b',' | b';' | b')' | b']' | b'}' | b'|'),
    };
    if !separated {
        return None;
    }
    let text = std::str::from_utf8(&bytes[at..end]).ok()?;
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        scan(text, &mut |k, v| out.push((k.to_string(), v)));
        out
    }

    fn pairs(list: &[(&str, f64)]) -> Vec<(String, f64)> {
        list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn numbers() {
        let n = |t: &str| number_at(t.as_bytes(), 0);
        assert_eq!(n("42"), Some(42.0));
        assert_eq!(n("-1.5e-3,"), Some(-1.5e-3));
        assert_eq!(n("+.5"), Some(0.5));
        assert_eq!(n("4.9e-05}"), Some(4.9e-5));
        assert_eq!(n("95%"), Some(95.0));
        assert_eq!(n("1e999"), None);
        for not in [
            "nan", "inf", "-inf", "3/10", "2.1.0", "10.0.0.1", "12:30", "3s", ".", "-", "e5",
        ] {
            assert_eq!(n(not), None, "{not}");
        }
    }

    #[test]
    fn pairs_are_found_at_every_offset() {
        for pad in 0..40 {
            let text = format!("{}loss=0.5 {}acc: 2", " ".repeat(pad), "-".repeat(pad % 17));
            assert_eq!(
                all(&text),
                pairs(&[("loss", 0.5), ("acc", 2.0)]),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_common_formats() {
        assert_eq!(
            all("Epoch 0: 100%|██████████| 938/938 [00:12<00:00, 75.53it/s, v_num=0, train_loss=0.123]"),
            pairs(&[("v_num", 0.0), ("train_loss", 0.123)])
        );
        assert_eq!(
            all("1875/1875 [====] - 3s 1ms/step - loss: 0.2946 - accuracy: 0.9151"),
            pairs(&[("loss", 0.2946), ("accuracy", 0.9151)])
        );
        assert_eq!(
            all("{'loss': 1.2345, 'grad_norm': 3.2, 'learning_rate': 4.9e-05, 'epoch': 0.1}"),
            pairs(&[
                ("loss", 1.2345),
                ("grad_norm", 3.2),
                ("learning_rate", 4.9e-5),
                ("epoch", 0.1)
            ])
        );
        assert_eq!(
            all(r#"{"step": 3, "name": "x", "acc": 97%, "nested": {"val/loss": -2}, "l": [1]}"#),
            pairs(&[("step", 3.0), ("acc", 97.0), ("val/loss", -2.0)])
        );
        assert_eq!(
            all("lr = 0.01; acc=95% step=7"),
            pairs(&[("lr", 0.01), ("acc", 95.0), ("step", 7.0)])
        );
    }
}
