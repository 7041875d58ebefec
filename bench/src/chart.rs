//! Line charts as SVG, for BENCHMARKS.md: a few series over one x axis, drawn
//! by hand (a handful of lines and labels do not need a plotting library).

use std::fmt::Write;

/// One line of a chart.
pub struct Series {
    /// Its legend.
    pub name: String,
    /// Its points, x then y.
    pub points: Vec<(f64, f64)>,
}

/// How the x axis is drawn.
pub enum XAxis {
    /// Powers of ten (data sizes).
    Log10,
    /// One labelled step per point (changes over time).
    Steps(Vec<String>),
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// An SVG document: `series` against `x`, the y axis from zero.
pub fn line_chart(title: &str, x: &XAxis, y_label: &str, series: &[Series]) -> String {
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| x_value(x, p.0)))
        .collect();
    let (x_min, x_max) = bounds(&xs);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let y_top = nice_ceiling(y_max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |v: f64| {
        let span = (x_max - x_min).max(1e-9);
        LEFT + (x_value(x, v) - x_min) / span * plot_w
    };
    let py = |v: f64| TOP + plot_h - v / y_top * plot_h;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r##"<rect width="100%" height="100%" fill="#fff"/><text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"##,
        escape(title)
    );
    // Horizontal grid and y labels.
    for step in 0..=5 {
        let value = y_top * f64::from(step) / 5.0;
        let y = py(value);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            short(value)
        );
    }
    // X ticks.
    match x {
        XAxis::Log10 => {
            let mut power = x_min.floor();
            while power <= x_max + 1e-9 {
                let xv = LEFT + (power - x_min) / (x_max - x_min).max(1e-9) * plot_w;
                let _ = write!(
                    svg,
                    r##"<line x1="{xv:.1}" y1="{TOP}" x2="{xv:.1}" y2="{:.1}" stroke="#eee"/><text x="{xv:.1}" y="{:.1}" text-anchor="middle">10^{power}</text>"##,
                    TOP + plot_h,
                    TOP + plot_h + 18.0
                );
                power += 1.0;
            }
        }
        XAxis::Steps(labels) => {
            // Slanted, so that many steps' labels do not run together.
            let yv = TOP + plot_h + 14.0;
            for (i, label) in labels.iter().enumerate() {
                let xv = px(i as f64);
                let _ = write!(
                    svg,
                    r#"<text x="{xv:.1}" y="{yv:.1}" text-anchor="end" transform="rotate(-30 {xv:.1} {yv:.1})">{}</text>"#,
                    escape(label)
                );
            }
        }
    }
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/>"##,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h,
        TOP + plot_h
    );
    let _ = write!(
        svg,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .map(|&(xv, yv)| format!("{:.1},{:.1}", px(xv), py(yv)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for &(xv, yv) in &s.points {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                px(xv),
                py(yv)
            );
        }
        let ly = TOP + 14.0 + i as f64 * 18.0;
        let lx = LEFT + plot_w + 14.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 4.0,
            lx + 18.0,
            ly - 4.0,
            lx + 24.0,
            ly,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn x_value(x: &XAxis, v: f64) -> f64 {
    match x {
        XAxis::Log10 => v.max(1.0).log10(),
        XAxis::Steps(_) => v,
    }
}

fn bounds(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if min.is_finite() && max.is_finite() {
        (min, max)
    } else {
        (0.0, 1.0)
    }
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * power)
}

/// A compact label: 12k, 1.5, 0.25.
fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_every_series() {
        let series = [
            Series {
                name: "GetPost".into(),
                points: vec![(1e3, 9000.0), (1e5, 8800.0), (1e6, 8700.0)],
            },
            Series {
                name: "A <b> & c".into(),
                points: vec![(1e3, 100.0), (1e6, 90.0)],
            },
        ];
        let svg = line_chart("calls/s", &XAxis::Log10, "calls/s", &series);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("10^3") && svg.contains("10^6"));
        assert!(svg.contains("A &lt;b&gt; &amp; c"));
        assert_eq!(nice_ceiling(8800.0), 10_000.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
    }
}
