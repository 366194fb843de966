//! `ablate serve` and `ablate report`.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use super::UsageError;
use super::history::open;
use super::results::study_name;
use crate::store::Workspace;
use crate::web::{self, AppState};

pub async fn serve(
    workspace: &Workspace,
    bind: IpAddr,
    port: u16,
    dashboards: PathBuf,
    query_timeout: Duration,
) -> anyhow::Result<ExitCode> {
    if !workspace.store_may_exist() {
        tracing::warn!("no ablate store in {} yet: pages fill in once a run starts there", workspace.root.display());
    }
    if !bind.is_loopback() {
        tracing::warn!("serving on {bind}: anyone who can reach this address can read the store");
    }
    if !dashboards.is_dir() {
        tracing::warn!("no dashboards folder {}: the dashboards page lists none (--dashboards DIR)", dashboards.display());
    }
    let state = AppState::new(workspace.clone(), dashboards, query_timeout);
    web::serve(state, SocketAddr::new(bind, port), |addr| {
        // Tests and scripts read the address (port 0 picks one) from this line.
        println!("ablate serve: listening on http://{addr}/");
        let _ = std::io::stdout().flush();
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn report(workspace: &Workspace, study: &str, html: &Path) -> anyhow::Result<ExitCode> {
    super::check_output_path(html)?;
    if !html.extension().is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm")) {
        return Err(UsageError(format!("--html {}: give a file name ending in .html", html.display())).into());
    }
    // Never over the study's own file or anything of the workspace (its store above all).
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let target = absolute(html);
    if target == absolute(Path::new(study)) || target.starts_with(absolute(&workspace.root)) {
        return Err(UsageError(format!(
            "--html {}: that is the study's file or inside the workspace; write the report elsewhere",
            html.display()
        ))
        .into());
    }
    let store = open(workspace).await?;
    let name = study_name(&store, study).await?;
    let page = web::report(&store, &name).await?;
    std::fs::write(html, page).with_context(|| format!("writing {}", html.display()))?;
    println!("wrote {}", html.display());
    Ok(ExitCode::SUCCESS)
}
