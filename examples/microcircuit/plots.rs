//! The example's two figures, drawn with plotters into PNG files: a spike raster of a
//! sample of each population and the measured rates beside the published ones.
//!
//! Text needs a TrueType font, read at run time: `$NEUROSTORE_FONT` or a common system
//! path. Without one the figures are drawn without text, and a note says so.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use neurostore::NeuronId;

use crate::model::{POPULATIONS, PUBLISHED_RATES_HZ, SpikeRecord};

/// Population colours: excitatory populations dark, inhibitory ones light, one hue per
/// layer.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 80, 160),
    RGBColor(120, 170, 230),
    RGBColor(200, 80, 20),
    RGBColor(245, 170, 100),
    RGBColor(30, 130, 60),
    RGBColor(130, 210, 130),
    RGBColor(130, 40, 140),
    RGBColor(210, 140, 220),
];

const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Whether the figures can have text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Font {
    /// A font was registered as "sans-serif".
    Loaded,
    /// None was found: figures without text.
    Missing,
}

/// Finds a TrueType font and registers it for plotters.
pub fn load_font() -> Font {
    let from_env = std::env::var("NEUROSTORE_FONT").ok();
    for path in from_env.iter().map(String::as_str).chain(FONT_PATHS) {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the whole process; so does this one.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Font::Loaded;
            }
        }
    }
    eprintln!(
        "note: no TrueType font found (set NEUROSTORE_FONT to a .ttf file); the figures \
         are drawn without text"
    );
    Font::Missing
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Neurons drawn per population: 5 % of it, at least 10 (or all it has).
fn sample_size(population: usize) -> usize {
    (population / 20).max(10).min(population)
}

/// The spike raster: a sample of each population over the measured window, L2/3E at the
/// top, coloured by population.
pub fn raster(
    path: &Path,
    record: &SpikeRecord,
    populations: &[Vec<NeuronId>],
    font: Font,
) -> DrawResult {
    let root = BitMapBackend::new(path, (1400, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    // Rows: population by population from the top; each sampled neuron gets one row.
    let mut row_of = std::collections::HashMap::new();
    let mut bands = Vec::new();
    let mut row = 0usize;
    for (p, neurons) in populations.iter().enumerate() {
        let first = row;
        for &n in neurons.iter().take(sample_size(neurons.len())) {
            row_of.insert(n, row);
            row += 1;
        }
        bands.push((p, first, row));
    }
    let rows = row.max(1) as f64;
    let t_max = record.time_ms.max(crate::model::DT_MS) as f32;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if font == Font::Loaded {
        builder
            .caption(
                format!(
                    "Spikes of {} sampled neurons (5 % per population), {} ms after the transient",
                    row, record.time_ms
                ),
                ("sans-serif", 24),
            )
            .x_label_area_size(45)
            .y_label_area_size(80);
    }
    let mut chart = builder.build_cartesian_2d(0f32..t_max, 0f64..rows)?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_mesh().y_labels(0);
    if font == Font::Loaded {
        mesh.x_desc("time (ms)").label_style(("sans-serif", 16));
    } else {
        mesh.x_labels(0);
    }
    mesh.draw()?;
    for (p, first, end) in &bands {
        if end > first {
            // Light bands behind odd populations to tell them apart.
            if p % 2 == 1 {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(0.0, rows - *end as f64), (t_max, rows - *first as f64)],
                    RGBColor(245, 245, 245).filled(),
                )))?;
            }
        }
    }
    chart.draw_series(record.spikes.iter().filter_map(|&(t, p, n)| {
        let r = *row_of.get(&n)?;
        Some(Rectangle::new(
            [
                (t, rows - r as f64 - 0.9),
                (t + t_max / 1400.0 * 1.5, rows - r as f64),
            ],
            COLORS[p as usize % 8].filled(),
        ))
    }))?;
    if font == Font::Loaded {
        for (p, first, end) in &bands {
            let middle = rows - (*first + *end) as f64 / 2.0;
            let (x, y) = chart.backend_coord(&(0.0, middle));
            root.draw(&Text::new(
                POPULATIONS[*p],
                (x - 70, y - 8),
                ("sans-serif", 18).into_font().color(&COLORS[*p]),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}

/// Measured rates beside the published ones, per population.
pub fn rates(path: &Path, measured: &[f64; 8], font: Font) -> DrawResult {
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = measured
        .iter()
        .chain(&PUBLISHED_RATES_HZ)
        .fold(1.0f64, |m, &r| if r.is_finite() { m.max(r) } else { m })
        * 1.15;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if font == Font::Loaded {
        builder
            .caption(
                "Mean rate per population: measured (dark) and published (light)",
                ("sans-serif", 22),
            )
            .x_label_area_size(45)
            .y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(-0.5f64..7.5f64, 0f64..top)?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh().x_labels(0);
    if font == Font::Loaded {
        mesh.y_desc("rate (Hz)").label_style(("sans-serif", 16));
    } else {
        mesh.y_labels(0);
    }
    mesh.draw()?;
    // The published bars: the population's colour mixed two parts to one with white.
    let faded = |c: RGBColor| {
        let mix = |v: u8| ((u16::from(v) + 2 * 255) / 3) as u8;
        RGBColor(mix(c.0), mix(c.1), mix(c.2))
    };
    for p in 0..8 {
        let x = p as f64;
        let value = if measured[p].is_finite() {
            measured[p]
        } else {
            0.0
        };
        chart.draw_series([
            Rectangle::new([(x - 0.38, 0.0), (x, value)], COLORS[p].filled()),
            Rectangle::new(
                [(x, 0.0), (x + 0.38, PUBLISHED_RATES_HZ[p])],
                faded(COLORS[p]).filled(),
            ),
            Rectangle::new(
                [(x, 0.0), (x + 0.38, PUBLISHED_RATES_HZ[p])],
                COLORS[p].stroke_width(1),
            ),
        ])?;
    }
    if font == Font::Loaded {
        for (p, name) in POPULATIONS.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(p as f64, 0.0));
            root.draw(&Text::new(
                *name,
                (x - 22, y + 10),
                ("sans-serif", 18).into_font(),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}
