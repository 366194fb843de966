//! Line and bar charts drawn with plotters, as SVG text (for files, web pages
//! and reports) or PNG bytes. One drawing routine per chart serves every
//! backend, so a plot file and a dashboard panel look the same.
//!
//! Text is laid out and rasterised with ab_glyph from the vendored DejaVu Sans
//! (`assets/fonts/`), so neither a build nor a PNG needs system fonts.

use std::sync::Once;

use anyhow::{Context as _, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// The family every chart asks plotters for; registered once, from the vendored font.
const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The vendored file is a valid TrueType font; failure would leave text undrawn, not crash.
        if plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_err() {
            tracing::warn!("the vendored chart font failed to load");
        }
    });
}

/// Output format of a chart file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    /// From a file name's extension (`.svg` or `.png`).
    pub fn from_path(path: &std::path::Path) -> anyhow::Result<Format> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            _ => Err(anyhow!("{}: the output must end in .svg or .png", path.display())),
        }
    }
}

/// One named line of `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Bars grouped by category, one bar per series in each group; each bar is a
/// value with an optional error (drawn as ± whiskers), or absent.
#[derive(Debug, Clone)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub series: Vec<BarSeries>,
}

#[derive(Debug, Clone)]
pub struct BarSeries {
    pub name: String,
    pub bars: Vec<Option<(f64, Option<f64>)>>,
}

/// Either kind of chart.
#[derive(Debug, Clone)]
pub enum Chart {
    Line(LineChart),
    Bar(BarChart),
}

impl Chart {
    /// Whether there is nothing to draw (a dashboard shows "no data yet" instead).
    pub fn is_empty(&self) -> bool {
        match self {
            Chart::Line(c) => c.series.iter().all(|s| s.points.iter().all(|(x, y)| !drawable(*x) || !drawable(*y))),
            Chart::Bar(c) => c.series.iter().all(|s| s.bars.iter().all(|b| !b.is_some_and(|(v, _)| drawable(v)))),
        }
    }

    pub fn svg(&self, size: (u32, u32)) -> anyhow::Result<String> {
        register_font();
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| anyhow!("drawing the chart: {e}"))?;
        }
        Ok(out)
    }

    pub fn png(&self, size: (u32, u32)) -> anyhow::Result<Vec<u8>> {
        register_font();
        let mut pixels = vec![0u8; size.0 as usize * size.1 as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| anyhow!("drawing the chart: {e}"))?;
        }
        let image = image::RgbImage::from_raw(size.0, size.1, pixels).context("chart buffer size")?;
        let mut png = Vec::new();
        image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).context("encoding PNG")?;
        Ok(png)
    }

    /// Writes the chart to `path` in the format its extension names.
    pub fn save(&self, path: &std::path::Path, size: (u32, u32)) -> anyhow::Result<()> {
        let bytes = match Format::from_path(path)? {
            Format::Svg => self.svg(size)?.into_bytes(),
            Format::Png => self.png(size)?,
        };
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the chart: {e}");
        root.fill(&WHITE).map_err(err)?;
        match self {
            Chart::Line(c) => draw_lines(root, c).map_err(err),
            Chart::Bar(c) => draw_bars(root, c).map_err(err),
        }
    }
}

/// A colour per series index, from a palette that stays readable on white.
pub fn palette(i: usize) -> RGBColor {
    const COLORS: [(u8, u8, u8); 8] =
        [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127)];
    let (r, g, b) = COLORS[i % COLORS.len()];
    RGBColor(r, g, b)
}

/// Values a chart can place: finite and within ±1e100. plotters' tick search
/// does not finish on ranges near f64's limits, and a dashboard query may
/// return anything; such values are left out like NaN.
fn drawable(v: f64) -> bool {
    v.is_finite() && v.abs() <= 1e100
}

/// `[lo, hi]` padded by 5 %, and never empty.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        return (lo - 0.5 * lo.abs().max(1.0), hi + 0.5 * hi.abs().max(1.0));
    }
    (lo - span * 0.05, hi + span * 0.05)
}

type Drawn<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_lines<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &LineChart) -> Drawn<DB> {
    let finite = || c.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| drawable(*x) && drawable(*y));
    let (x0, x1) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
    let (y0, y1) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
    let (x0, x1) = padded(x0, x1);
    let (y0, y1) = padded(y0, y1);
    let mut chart = ChartBuilder::on(root)
        .caption(&c.title, (FONT, 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart.configure_mesh().x_desc(&c.x_label).y_desc(&c.y_label).label_style((FONT, 12)).light_line_style(WHITE.mix(0.0)).draw()?;
    for (i, s) in c.series.iter().enumerate() {
        let color = palette(i);
        let points: Vec<(f64, f64)> = s.points.iter().copied().filter(|(x, y)| drawable(*x) && drawable(*y)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        if points.len() == 1 {
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
    }
    if c.series.len() > 1 || c.series.iter().any(|s| !s.name.is_empty()) {
        chart.configure_series_labels().label_font((FONT, 12)).background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.3)).draw()?;
    }
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &BarChart) -> Drawn<DB> {
    let tops = c.series.iter().flat_map(|s| s.bars.iter().flatten()).filter(|(v, _)| drawable(*v));
    let (lo, hi) = tops.fold((0.0f64, 0.0f64), |(lo, hi), (v, e)| {
        let e = e.filter(|e| drawable(*e)).unwrap_or(0.0).abs();
        (lo.min(v - e), hi.max(v + e))
    });
    let (lo, hi) =
        if hi - lo <= f64::EPSILON { (0.0, 1.0) } else { (if lo < 0.0 { lo * 1.08 } else { 0.0 }, if hi > 0.0 { hi * 1.08 } else { 0.0 }) };
    let n = c.categories.len().max(1);
    let categories = c.categories.clone();
    let mut chart = ChartBuilder::on(root)
        .caption(&c.title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..n as f64, lo..hi)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE.mix(0.0))
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            // Labels sit at category centres (k + 0.5); other ticks stay blank.
            let k = (x - 0.5).round();
            if (x - 0.5 - k).abs() < 1e-6 && k >= 0.0 { categories.get(k as usize).cloned().unwrap_or_default() } else { String::new() }
        })
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        .label_style((FONT, 12))
        .draw()?;
    let width = 0.8 / c.series.len().max(1) as f64;
    for (si, s) in c.series.iter().enumerate() {
        let color = palette(si);
        let bars: Vec<(f64, f64, Option<f64>)> = s
            .bars
            .iter()
            .enumerate()
            .filter_map(|(k, b)| b.filter(|(v, _)| drawable(*v)).map(|(v, e)| (k as f64 + 0.1 + si as f64 * width, v, e)))
            .collect();
        chart
            .draw_series(bars.iter().map(|&(x, v, _)| Rectangle::new([(x, 0.0), (x + width * 0.92, v)], color.filled())))?
            .label(&s.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        for &(x, v, e) in &bars {
            let Some(e) = e.filter(|e| drawable(*e) && *e > 0.0) else { continue };
            let mid = x + width * 0.46;
            let cap = width * 0.2;
            let style = BLACK.stroke_width(1);
            chart.draw_series([
                PathElement::new(vec![(mid, v - e), (mid, v + e)], style),
                PathElement::new(vec![(mid - cap, v - e), (mid + cap, v - e)], style),
                PathElement::new(vec![(mid - cap, v + e), (mid + cap, v + e)], style),
            ])?;
        }
    }
    if c.series.len() > 1 || c.series.iter().any(|s| !s.name.is_empty()) {
        chart.configure_series_labels().label_font((FONT, 12)).background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.3)).draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Chart {
        Chart::Line(LineChart {
            title: "loss & <curves>".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![Series { name: "cosine".into(), points: vec![(0.0, 1.0), (1.0, 0.5), (2.0, 0.25)] }],
        })
    }

    #[test]
    fn svg_and_png_render_with_the_vendored_font() {
        let svg = line().svg((480, 320)).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("cosine") && svg.contains("loss &amp; &lt;curves&gt;"));
        let png = line().png((480, 320)).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let bars = Chart::Bar(BarChart {
            title: "t".into(),
            x_label: "loss".into(),
            y_label: "top1".into(),
            categories: vec!["cosine".into(), "infonce".into()],
            series: vec![BarSeries { name: String::new(), bars: vec![Some((0.5, Some(0.1))), None] }],
        });
        assert!(bars.png((400, 300)).is_ok());
        assert!(bars.svg((400, 300)).unwrap().contains("infonce"));
        let empty = Chart::Line(LineChart { title: String::new(), x_label: String::new(), y_label: String::new(), series: vec![] });
        assert!(empty.is_empty());
        assert!(empty.svg((200, 100)).is_ok(), "an empty chart still draws");
        let extreme = Chart::Line(LineChart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            series: vec![Series {
                name: "x".into(),
                points: vec![(0.0, 1e308), (1.0, -1e308), (2.0, f64::NAN), (3.0, 7.0), (-1e100, 1e100), (1e100, -1e100), (1e-300, 1e-300)],
            }],
        });
        assert!(extreme.svg((200, 100)).is_ok(), "values near f64's limits are left out, not hung on");
        let bars = Chart::Bar(BarChart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            categories: vec!["a".into(), "b".into()],
            series: vec![BarSeries { name: String::new(), bars: vec![Some((1e308, Some(1e308))), Some((2.0, Some(f64::INFINITY)))] }],
        });
        assert!(bars.svg((200, 100)).is_ok());
        let flat = Chart::Line(LineChart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            series: vec![Series { name: String::new(), points: vec![(5.0, 2.0)] }],
        });
        assert!(flat.png((200, 100)).is_ok(), "a single point draws");
    }
}
