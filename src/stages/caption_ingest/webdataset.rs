//! `webdataset:PATTERN`: tar shards as img2dataset (and webdataset's
//! `ShardWriter`) write them. A sample is a run of consecutive members that
//! share a key (the member path up to the first `.` of its file name):
//! `KEY.jpg|jpeg|png|webp` (the image), `KEY.txt` (the caption) and, optionally,
//! `KEY.json`, whose `long_field` names a long caption. Other members are
//! ignored. `PATTERN` lists the shards with brace groups, as webdataset does:
//! `data/{00000..00099}.tar` (a numeric range, zero-padded to its width) or
//! `data/{train,extra}-{0..3}.tar` (alternatives), expanded left to right.
//!
//! A sample without an image or caption, an image that does not decode, an
//! empty caption, or (with `long_field`) a missing or empty long caption is
//! bad data: under `on_error` it fails the stage or is skipped and counted,
//! and the message names the shard and the member. A shard that is not a
//! readable tar file always fails the stage. Samples have no labels and no
//! hard negatives.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};

use super::coco::TEMPLATES;
use super::dataset::{Dataset, Options, Record};
use super::imageio;
use crate::stages::StageContext;

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// The shard paths a pattern lists, in order.
pub(super) fn shards(pattern: &str) -> Result<Vec<PathBuf>, String> {
    Ok(expand_braces(pattern)?.into_iter().map(PathBuf::from).collect())
}

/// Expands every `{a..b}` (numeric, zero-padded when either end has a leading
/// zero) and `{x,y,z}` group, left to right, as the `braceexpand` package that
/// webdataset uses does for these forms.
fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(format!("{pattern:?} has a `}}` without a `{{`"));
        }
        return Ok(vec![pattern.to_owned()]);
    };
    let (head, rest) = pattern.split_at(open);
    if head.contains('}') {
        return Err(format!("{pattern:?} has a `}}` without a `{{`"));
    }
    let close = rest.find('}').ok_or_else(|| format!("{pattern:?} has a `{{` without a `}}`"))?;
    let group = &rest[1..close];
    if group.contains('{') {
        return Err(format!("{pattern:?} nests braces; write one group per position"));
    }
    let choices: Vec<String> = match group.split_once("..") {
        Some((a, b)) => numeric_range(a, b).map_err(|e| format!("{pattern:?}: {{{group}}}: {e}"))?,
        None if group.contains(',') => group.split(',').map(str::to_owned).collect(),
        None => return Err(format!("{pattern:?}: {{{group}}} is neither a range `{{a..b}}` nor a list `{{x,y}}`")),
    };
    let tails = expand_braces(&rest[close + 1..])?;
    Ok(choices.iter().flat_map(|c| tails.iter().map(move |t| format!("{head}{c}{t}"))).collect())
}

fn numeric_range(a: &str, b: &str) -> Result<Vec<String>, String> {
    let parse = |s: &str| s.parse::<u64>().map_err(|_| format!("{s:?} is not a non-negative integer"));
    let (lo, hi) = (parse(a)?, parse(b)?);
    if lo > hi {
        return Err(format!("the range runs backwards ({lo} > {hi})"));
    }
    let padded = |s: &str| s.len() > 1 && s.starts_with('0');
    let width = if padded(a) || padded(b) { a.len().max(b.len()) } else { 0 };
    Ok((lo..=hi).map(|i| format!("{i:0width$}")).collect())
}

/// One sample's members, gathered from consecutive tar entries.
#[derive(Default)]
struct Sample {
    key: String,
    image: Option<(String, Vec<u8>)>,
    caption: Option<Vec<u8>>,
    json: Option<Vec<u8>>,
}

/// Splits a member path into (key, extension): the extension starts at the
/// first `.` of the file name, as in webdataset's `base_plus_ext`.
fn key_and_extension(member: &str) -> Option<(&str, &str)> {
    let name_start = member.rfind('/').map_or(0, |i| i + 1);
    let dot = member[name_start..].find('.')? + name_start;
    Some((&member[..dot], &member[dot + 1..]))
}

/// Shards in order, samples in member order, until `opts.images` are kept.
pub(super) fn ingest(ctx: &StageContext, opts: &Options, shards: &[PathBuf], long_field: Option<&str>) -> anyhow::Result<Dataset> {
    let mut data = Dataset::new(ctx, opts, &[], TEMPLATES)?;
    ctx.progress().set_length(opts.images as u64);
    for shard in shards {
        if data.records.len() >= opts.images {
            break;
        }
        let file = std::fs::File::open(shard).with_context(|| format!("cannot open shard {}", shard.display()))?;
        let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
        let mut sample = Sample::default();
        let entries = archive.entries().with_context(|| format!("{}: not a tar file", shard.display()))?;
        for entry in entries {
            let mut entry = entry.with_context(|| format!("{}: not a readable tar file", shard.display()))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some((key, ext)) = key_and_extension(&member) else { continue };
            if key != sample.key {
                finish(ctx, opts, shard, long_field, std::mem::take(&mut sample), &mut data)?;
                if data.records.len() >= opts.images {
                    break;
                }
                sample.key = key.to_owned();
            }
            let ext = ext.to_ascii_lowercase();
            let wanted = IMAGE_EXTENSIONS.contains(&ext.as_str()) || ext == "txt" || ext == "json";
            if !wanted {
                continue;
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).with_context(|| format!("{}: member {member}: cannot read", shard.display()))?;
            match ext.as_str() {
                "txt" => sample.caption = Some(bytes),
                "json" => sample.json = Some(bytes),
                _ => sample.image = Some((member, bytes)),
            }
        }
        if data.records.len() < opts.images {
            finish(ctx, opts, shard, long_field, sample, &mut data)?;
        }
        ctx.check_cancelled()?;
    }
    Ok(data)
}

/// Decodes one gathered sample into the dataset, or hands its problem to `on_error`.
fn finish(
    ctx: &StageContext,
    opts: &Options,
    shard: &Path,
    long_field: Option<&str>,
    sample: Sample,
    data: &mut Dataset,
) -> anyhow::Result<()> {
    if sample.key.is_empty() {
        return Ok(());
    }
    let shard_name = shard.display();
    let key = &sample.key;
    let item = || -> anyhow::Result<(Vec<u8>, String, Option<String>)> {
        let (member, bytes) =
            sample.image.as_ref().ok_or_else(|| anyhow!("{shard_name}: sample {key}: no image member (KEY.jpg, .jpeg, .png or .webp)"))?;
        let caption = sample.caption.as_ref().ok_or_else(|| anyhow!("{shard_name}: sample {key}: no caption member {key}.txt"))?;
        let caption = String::from_utf8_lossy(caption).trim().to_owned();
        if caption.is_empty() {
            return Err(anyhow!("{shard_name}: member {key}.txt: empty caption"));
        }
        let pixels = imageio::decode_rgb(bytes, opts.resolution).map_err(|e| anyhow!("{shard_name}: member {member}: {e:#}"))?;
        let long = match long_field {
            None => None,
            Some(field) => Some(long_caption(&sample, field).map_err(|e| anyhow!("{shard_name}: member {key}.json: {e}"))?),
        };
        Ok((pixels, caption, long))
    };
    match item() {
        Ok((pixels, caption, long)) => {
            let short = vec![caption];
            let long = long.map_or_else(|| short.clone(), |l| vec![l]);
            let source =
                format!("{}/{}", shard.file_name().map_or(shard_name.to_string(), |n| n.to_string_lossy().into_owned()), sample.key);
            data.push(&pixels, Record { short, long, label: None, source, split: None })?;
            ctx.progress().set_position(data.records.len() as u64);
            Ok(())
        }
        Err(err) => data.problem(opts, err),
    }
}

/// The non-empty string at `field` of the sample's `.json` member.
fn long_caption(sample: &Sample, field: &str) -> anyhow::Result<String> {
    let json = sample.json.as_ref().ok_or_else(|| anyhow!("missing (long_field = {field:?} reads the long caption from it)"))?;
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| anyhow!("not JSON: {e}"))?;
    match value.get(field) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(serde_json::Value::String(_)) => Err(anyhow!("field {field:?} (long_field) is empty")),
        Some(other) => Err(anyhow!("field {field:?} (long_field) is not a string: {other}")),
        None => Err(anyhow!("has no field {field:?} (long_field)")),
    }
}

/// What the key follows: each shard's path, size and modification time, one
/// `stat` per shard, never its contents, so planning over terabytes of shards
/// stays instant. A shard rewritten in place gets a new modification time and
/// so a new key; one replaced by a copy that keeps both size and time does not
/// (`run --force` the ingest stage then).
pub(super) fn fingerprint(shards: &[PathBuf]) -> anyhow::Result<String> {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    for shard in shards {
        let meta = std::fs::metadata(shard).with_context(|| format!("shard {} does not exist or cannot be read", shard.display()))?;
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        h.update(shard.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(meta.len().to_le_bytes());
        h.update(modified.to_le_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brace_groups_expand_like_webdataset() {
        assert_eq!(expand_braces("d/{00000..00002}.tar").unwrap(), ["d/00000.tar", "d/00001.tar", "d/00002.tar"]);
        assert_eq!(expand_braces("{8..10}").unwrap(), ["8", "9", "10"]);
        assert_eq!(expand_braces("{a,b}-{0..1}.tar").unwrap(), ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]);
        assert_eq!(expand_braces("one.tar").unwrap(), ["one.tar"]);
        for (bad, says) in [
            ("d/{0..3.tar", "without a `}`"),
            ("d/0..3}.tar", "without a `{`"),
            ("{3..1}", "backwards"),
            ("{a..b}", "not a non-negative integer"),
            ("{x}", "neither a range"),
            ("{{0..1}}", "nests braces"),
        ] {
            let err = expand_braces(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn keys_end_at_the_first_dot_of_the_file_name() {
        assert_eq!(key_and_extension("000123.jpg"), Some(("000123", "jpg")));
        assert_eq!(key_and_extension("a.b/000123.seg.png"), Some(("a.b/000123", "seg.png")));
        assert_eq!(key_and_extension("README"), None);
    }
}
