//! HTML building blocks: escaping (everything shown goes through [`esc`]), times, the page
//! layout and the forms' buttons.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Page;

/// `s` escaped for HTML text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A moment (unix seconds) as a `<time>` the page's script shows as an age ("12 s ago",
/// "in 3 h"); `—` for 0.
pub fn time(unix: u64) -> String {
    if unix == 0 {
        return "—".into();
    }
    let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix));
    format!("<time datetime=\"{at}\" data-ts=\"{unix}\">{at}</time>")
}

/// An RFC 3339 text as a [`time`] (shown as written when it does not read as one).
pub fn time_text(rfc3339: &str) -> String {
    match humantime::parse_rfc3339_weak(rfc3339.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(rfc3339))
    {
        Ok(t) => time(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
        ),
        Err(_) => esc(rfc3339),
    }
}

/// Now, unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A rate, with one decimal below 10.
pub fn rate(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    if x.abs() < 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// Bytes a second, in B/s, KiB/s, MiB/s.
pub fn bytes_rate(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    if x < 1024.0 {
        format!("{x:.0} B/s")
    } else if x < 1024.0 * 1024.0 {
        format!("{:.1} KiB/s", x / 1024.0)
    } else {
        format!("{:.1} MiB/s", x / (1024.0 * 1024.0))
    }
}

/// A one-button form posting `fields` to `/console/actions/<action>`.
pub fn button(action: &str, fields: &[(&str, &str)], label: &str, class: &str) -> String {
    form_button(action, fields, label, class, None)
}

/// [`button`] for what is hard to undo: the browser asks `question` first.
pub fn confirm_button(
    action: &str,
    fields: &[(&str, &str)],
    label: &str,
    class: &str,
    question: &str,
) -> String {
    form_button(action, fields, label, class, Some(question))
}

fn form_button(
    action: &str,
    fields: &[(&str, &str)],
    label: &str,
    class: &str,
    confirm: Option<&str>,
) -> String {
    let confirm = confirm
        .map(|q| format!(" data-confirm=\"{}\"", esc(q)))
        .unwrap_or_default();
    let mut s = format!(
        "<form class=\"inline\" method=\"post\" action=\"/console/actions/{}\"{confirm}>",
        esc(action)
    );
    for (k, v) in fields {
        let _ = write!(
            s,
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            esc(k),
            esc(v)
        );
    }
    let _ = write!(
        s,
        "<button type=\"submit\" class=\"{}\">{}</button></form>",
        esc(class),
        esc(label)
    );
    s
}

/// A message from the last action: success or failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flash {
    /// It worked.
    Ok(String),
    /// It failed: what the API said.
    Err(String),
}

/// A whole page: header, navigation, the flash message, `forms` (outside the live section,
/// so typing is never interrupted by an update) and the live section holding `live`.
pub fn layout(page: Page, flash: Option<&Flash>, forms: &str, live: &str) -> String {
    let mut nav = String::new();
    for p in Page::ALL {
        let _ = write!(
            nav,
            "<a href=\"/console/{}\"{}>{}</a>",
            p.slug(),
            if p == page {
                " class=\"active\" aria-current=\"page\""
            } else {
                ""
            },
            p.title()
        );
    }
    let flash = match flash {
        Some(Flash::Ok(m)) => format!(
            "<p class=\"flash ok\" id=\"flash\" role=\"status\">{}</p>",
            esc(m)
        ),
        Some(Flash::Err(m)) => format!(
            "<p class=\"flash err\" id=\"flash\" role=\"alert\">{}</p>",
            esc(m)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · KubeHub console</title>\
<link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
<script src=\"/console/assets/console.js\" defer></script></head>\
<body><header><span class=\"brand\">KubeHub</span><nav>{nav}</nav>\
<span id=\"live-status\" class=\"live\">connecting…</span>\
<form class=\"inline\" method=\"post\" action=\"/console/logout\">\
<button type=\"submit\" class=\"quiet\">Log out</button></form></header>\
<main><h1>{title}</h1>{flash}{forms}\
<input type=\"search\" id=\"filter\" placeholder=\"Filter rows\" aria-label=\"Filter rows\">\
<section id=\"live\" data-page=\"{slug}\" data-updates=\"0\">{live}</section></main></body></html>\n",
        title = page.title(),
        slug = page.slug(),
    )
}

/// The login page.
pub fn login(error: Option<&str>) -> String {
    let error = error
        .map(|e| {
            format!(
                "<p class=\"flash err\" id=\"flash\" role=\"alert\">{}</p>",
                esc(e)
            )
        })
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Log in · KubeHub console</title>\
<link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head>\
<body class=\"login\"><main><h1>KubeHub console</h1>{error}\
<form method=\"post\" action=\"/console/login\" id=\"login\">\
<label>Admin token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" required autofocus></label>\
<button type=\"submit\">Log in</button></form>\
<p class=\"hint\">The token is one of meta's admin tokens (the lines of <code>admin_token_file</code>). \
It is kept in a cookie for this browser session only.</p></main></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_shown_is_escaped() {
        assert_eq!(
            esc("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
        let b = button("ban", &[("id", "\"><script>")], "<b>", "x\"");
        assert!(!b.contains("<script>") && !b.contains("<b>"), "{b}");
        let b = confirm_button("drain", &[], "Drain", "", "Drain \"<hub>\"?");
        assert!(
            b.contains("data-confirm=\"Drain &quot;&lt;hub&gt;&quot;?\""),
            "{b}"
        );
        let page = layout(
            Page::Bans,
            Some(&Flash::Err("<img src=x onerror=alert(1)>".into())),
            "",
            "",
        );
        assert!(!page.contains("<img"), "{page}");
    }

    #[test]
    fn times_carry_their_moment_for_the_script() {
        assert_eq!(
            time(1_700_000_000),
            "<time datetime=\"2023-11-14T22:13:20Z\" data-ts=\"1700000000\">2023-11-14T22:13:20Z</time>"
        );
        assert_eq!(time(0), "—");
        assert!(time_text("2023-11-14T22:13:20Z").contains("data-ts=\"1700000000\""));
        assert_eq!(time_text("<soon>"), "&lt;soon&gt;");
    }

    #[test]
    fn rates_read_well() {
        assert_eq!(rate(0.26), "0.3");
        assert_eq!(rate(1234.4), "1234");
        assert_eq!(bytes_rate(2048.0), "2.0 KiB/s");
        assert_eq!(bytes_rate(f64::NAN), "—");
    }
}
