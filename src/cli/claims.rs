//! `ablate claims`: each `[[claims]]` of a pipeline file with its verdict;
//! the same table ends `ablate results` and `ablate run`.

use std::path::Path;
use std::process::ExitCode;

use super::print_json;
use super::render::Table;
use crate::claims::{self, Outcome};
use crate::pipeline::{PipelineSpec, SourceFile, parse::parse};
use crate::store::{HistoryRow, Store, Workspace};

/// `ablate claims FILE [--json]`. Claims whose instances have not run are
/// `incomplete`, also before anything ran here; a claim that cannot be
/// decided (no instance matches, an unknown metric, no pairs) is a located error.
pub async fn claims(workspace: &Workspace, file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let spec = parse(SourceFile::read(file)?)?;
    claims::check(&spec)?;
    let rows = match Store::open_read_only(workspace).await? {
        Some(store) => {
            let rows = crate::pivot::current_version(store.history(Some(&spec.name)).await?, &spec).0;
            store.close().await;
            rows
        }
        None => Vec::new(),
    };
    let outcomes = claims::evaluate_all(&spec, &rows)?;
    if json {
        print_json(&serde_json::to_value(&outcomes)?);
    } else if outcomes.is_empty() {
        tracing::warn!("{} declares no [[claims]]", file.display());
    } else {
        print_table(&outcomes);
    }
    Ok(ExitCode::SUCCESS)
}

/// The claims table, then a line per claim saying how its cells were paired and averaged.
fn print_table(outcomes: &[Outcome]) {
    let mut table = Table::new(&Outcome::HEADER.map(str::to_uppercase).iter().map(String::as_str).collect::<Vec<_>>());
    for o in outcomes {
        table.row(o.cells());
    }
    print!("{}", table.render());
    for o in outcomes {
        println!("  {}", o.note());
    }
}

/// The claims table after a study's results (`results`, `run`), when the file
/// has claims; a claim that cannot be decided is a warning there, not a failure.
pub(super) fn print_after_results(spec: &PipelineSpec, rows: &[HistoryRow]) {
    if spec.claims.is_empty() {
        return;
    }
    let outcomes = match claims::evaluate(spec, rows) {
        Ok(outcomes) => outcomes,
        Err(e) => return tracing::warn!("{e}"),
    };
    let mut decided = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(o) => decided.push(o),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    if !decided.is_empty() {
        println!();
        print_table(&decided);
    }
}
