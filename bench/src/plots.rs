//! PNG plots of the report: latency distributions (one line per system) and
//! throughput against the number of clients. Text is drawn with DejaVu Sans
//! (Debian's `fonts-dejavu-core`, installed by `bench/scripts/peers install`);
//! without it no plot is drawn and the report says so.

use std::path::Path;

use plotters::prelude::*;

use crate::Samples;

/// Where the plots' font is looked for.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers the font once; false if it is missing.
pub fn font_available() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let Ok(bytes) = std::fs::read(FONT_PATH) else { return false };
        // The registry wants bytes that live for the whole process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    })
}

/// One colour per series, in table order (Gaios, then the peers' columns,
/// then extras such as etcd's serializable reads).
fn colour(index: usize) -> RGBColor {
    const COLOURS: [RGBColor; 8] = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    COLOURS[index % COLOURS.len()]
}

/// Latency CDFs: x the latency in ms (log scale), y the fraction of
/// operations at or below it.
pub fn latency_cdf(path: &Path, title: &str, series: &[(String, &Samples)]) -> anyhow::Result<()> {
    let curves: Vec<(String, Vec<(f64, f64)>)> =
        series.iter().map(|(name, samples)| (name.clone(), samples.cdf(400))).filter(|(_, c)| !c.is_empty()).collect();
    let low = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.0)).fold(f64::INFINITY, f64::min).max(0.01);
    let high = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.0)).fold(0.0, f64::max).max(low * 2.0);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((low * 0.8..high * 1.25).log_scale(), 0.0..1.0)?;
    chart.configure_mesh().x_desc("latency (ms, log scale)").y_desc("fraction of operations").draw()?;
    for (index, (name, curve)) in curves.iter().enumerate() {
        line(&mut chart, index, name, curve.clone())?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// Throughput: x the number of clients (log scale), y operations per second.
pub fn throughput(path: &Path, title: &str, series: &[(String, Vec<(usize, f64)>)]) -> anyhow::Result<()> {
    let max_clients = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.0)).max().unwrap_or(10).max(2);
    let min_clients = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.0)).min().unwrap_or(1).max(1);
    let max_rate = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.1)).fold(1.0, f64::max);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((min_clients as f64 * 0.8..max_clients as f64 * 1.25).log_scale(), 0.0..max_rate * 1.15)?;
    chart.configure_mesh().x_desc("concurrent clients (log scale)").y_desc("writes per second").draw()?;
    for (index, (name, points)) in series.iter().enumerate() {
        let points: Vec<(f64, f64)> = points.iter().map(|&(c, r)| (c as f64, r)).collect();
        line(&mut chart, index, name, points.clone())?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour(index).filled())))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

/// Both plots' charts: a log-scale x axis and a linear y axis.
type Chart<'a> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<LogCoord<f64>, plotters::coord::types::RangedCoordf64>>;

/// One system's line, in its colour, named in the legend.
fn line(chart: &mut Chart<'_>, index: usize, name: &str, points: Vec<(f64, f64)>) -> anyhow::Result<()> {
    chart
        .draw_series(LineSeries::new(points, colour(index).stroke_width(2)))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour(index).stroke_width(2)));
    Ok(())
}

fn legend(chart: &mut Chart<'_>, position: SeriesLabelPosition) -> anyhow::Result<()> {
    chart.configure_series_labels().position(position).background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}
