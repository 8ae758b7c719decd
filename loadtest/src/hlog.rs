//! `--hlog`: the run's latency histograms as an HdrHistogram interval log (V2 compressed
//! histograms, values in nanoseconds), readable by HdrHistogram's log tools. Untagged
//! entries are the latency (from the intended start); entries tagged `service` the time
//! from the actual start.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::engine::Interval;

pub fn write(
    path: &Path,
    started: std::time::SystemTime,
    intervals: &[Interval],
) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("tlsfront-load latency log, values in nanoseconds")
        .with_start_time(started)
        .with_base_time(started)
        .with_max_value_divisor(1e6)
        .begin_log_with(&mut out, &mut serializer)
        .with_context(|| format!("writing {}", path.display()))?;
    let service = Tag::new("service");
    for i in intervals {
        let length = i.to.saturating_sub(i.from);
        let from = i.from;
        write_one(&mut log, &i.sample.latency, from, length, None)?;
        write_one(&mut log, &i.sample.service, from, length, service)?;
    }
    drop(log);
    use std::io::Write;
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn write_one<W: std::io::Write>(
    log: &mut hdrhistogram::serialization::interval_log::IntervalLogWriter<W, V2DeflateSerializer>,
    h: &hdrhistogram::Histogram<u64>,
    from: Duration,
    length: Duration,
    tag: Option<Tag>,
) -> anyhow::Result<()> {
    log.write_histogram(h, from, length, tag)
        .map_err(|e| anyhow::anyhow!("writing the interval log: {e:?}"))
}
