//! User values echoed in messages and narrow cells, cut to a width. Below the
//! pipeline compiler and the stage kinds, which both quote what the user wrote.

/// `text` cut to at most `max` characters (the last one `…`), for echoing
/// user values in messages and narrow cells.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max.saturating_sub(1)).collect::<String>())
    }
}

/// How much of a user value a message echoes.
pub const ECHOED: usize = 60;
