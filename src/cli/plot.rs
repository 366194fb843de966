//! `ablate plot`: training curves of instances, and bars of an ablation pivot.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::history::open;
use super::results::study_name;
use super::{UsageError, resolve_instance};
use crate::chart::{Chart, Format, LineChart, Series};
use crate::filter::value_text;
use crate::pivot::{self, PivotSpec};
use crate::store::Workspace;

#[derive(Subcommand)]
pub enum PlotCommand {
    /// Training curves: one line per instance of a metric recorded with steps.
    Curves {
        /// Instance keys (or unique prefixes).
        #[arg(required = true)]
        keys: Vec<String>,
        #[arg(long)]
        metric: String,
        #[command(flatten)]
        out: Output,
    },
    /// Bars of a final metric grouped by an axis, mean ± std over the other axes.
    Bars {
        /// A pipeline file or pipeline name.
        study: String,
        #[arg(long)]
        metric: String,
        /// The axis along the x axis (or `stage`). Bars of several stages are
        /// never pooled: without `--stage`, the stage leads the groups.
        #[arg(long)]
        by: String,
        /// An axis whose values become side-by-side bars (and a legend).
        #[arg(long)]
        series: Option<String>,
        /// Only this stage's instances.
        #[arg(long)]
        stage: Option<String>,
        #[command(flatten)]
        out: Output,
    },
}

/// Where a chart goes and its size in pixels.
#[derive(clap::Args)]
pub struct Output {
    /// Output file: .svg or .png.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    #[arg(long, default_value_t = 800)]
    width: u32,
    #[arg(long, default_value_t = 480)]
    height: u32,
}

impl Output {
    /// Checks the format and size before any work is done.
    fn checked(&self) -> anyhow::Result<(u32, u32)> {
        Format::from_path(&self.output).map_err(|e| UsageError(e.to_string()))?;
        super::check_output_path(&self.output)?;
        if !(100..=8000).contains(&self.width) || !(100..=8000).contains(&self.height) {
            return Err(UsageError(format!(
                "--width and --height must be between 100 and 8000 pixels (got {}×{})",
                self.width, self.height
            ))
            .into());
        }
        Ok((self.width, self.height))
    }
}

pub async fn plot(workspace: &Workspace, command: PlotCommand) -> anyhow::Result<ExitCode> {
    let (chart, output, size) = match command {
        PlotCommand::Curves { keys, metric, out } => {
            let size = out.checked()?;
            let store = open(workspace).await?;
            let mut series = Vec::new();
            for key in &keys {
                let instance = resolve_instance(&store, key).await?;
                let points: Vec<(f64, f64)> =
                    store.metric_curve(&instance.key, &metric).await?.into_iter().map(|(s, v)| (s as f64, v)).collect();
                if points.is_empty() {
                    let have = store.stepped_metrics(&instance.key).await?;
                    let have = if have.is_empty() { "none".to_owned() } else { have.join(", ") };
                    return Err(UsageError(format!(
                        "instance {} has no stepped values of `{metric}` in its finished attempt (stepped metrics: {have})",
                        &instance.key[..12]
                    ))
                    .into());
                }
                let binding = store.bindings_of(instance.id).await?.into_iter().next();
                let name = match binding {
                    Some(b) => {
                        let axes = b
                            .axes
                            .as_object()
                            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect::<Vec<_>>().join(" "));
                        format!("{} {} {}", b.stage, axes.unwrap_or_default(), &instance.key[..8]).replace("  ", " ")
                    }
                    None => instance.key[..12].to_owned(),
                };
                series.push(Series { name, points });
            }
            let chart = Chart::Line(LineChart { title: metric.clone(), x_label: "step".into(), y_label: metric, series });
            (chart, out.output, size)
        }
        PlotCommand::Bars { study, metric, by, series, stage, out } => {
            let size = out.checked()?;
            let store = open(workspace).await?;
            let name = study_name(&store, &study).await?;
            let (history, left_out) = pivot::current_rows(&store, &name).await?;
            super::results::warn_left_out(left_out);
            if let Some(stage) = &stage
                && !history.iter().any(|r| r.stage == *stage)
            {
                return Err(UsageError(format!(
                    "--stage {stage}: no finished instance of stage `{stage}` in `{name}` (stages: {})",
                    pivot::distinct(history.iter().map(|r| r.stage.as_str())).join(", ")
                ))
                .into());
            }
            let rows: Vec<_> = pivot::latest(&history).into_iter().filter(|r| stage.as_ref().is_none_or(|s| *s == r.stage)).collect();
            let with_metric: Vec<_> = rows.iter().filter(|r| r.metrics.contains_key(&metric)).collect();
            if with_metric.is_empty() {
                let seen = pivot::distinct(rows.iter().flat_map(|r| r.metrics.keys().map(String::as_str)));
                let seen = if seen.is_empty() { "none".to_owned() } else { seen.join(", ") };
                return Err(UsageError(format!("no finished instance of `{name}` recorded `{metric}` (metrics: {seen})")).into());
            }
            if series.as_ref() == Some(&by) {
                return Err(UsageError(format!("--by and --series both name `{by}`: give --series another axis")).into());
            }
            for axis in std::iter::once(&by).chain(series.as_ref()) {
                if axis != "stage" && !with_metric.iter().any(|r| r.axes.contains_key(axis)) {
                    let axes = pivot::distinct(with_metric.iter().flat_map(|r| r.axes.keys().map(String::as_str))).join(", ");
                    return Err(
                        UsageError(format!("`{axis}` is not an axis of the instances that recorded `{metric}` (axes: {axes})")).into()
                    );
                }
            }
            let spec = PivotSpec {
                metric: metric.clone(),
                rows: vec![by],
                cols: series.into_iter().collect(),
                pipeline: Some(name.clone()),
                stage,
            };
            let p = pivot::pivot(&history, &spec);
            let over = if p.over.is_empty() { String::new() } else { format!(" (mean ± std over {})", p.over.join(", ")) };
            (Chart::Bar(p.bar_chart(&format!("{name}: {metric}{over}"))), out.output, size)
        }
    };
    chart.save(&output, size)?;
    println!("wrote {}", output.display());
    Ok(ExitCode::SUCCESS)
}
