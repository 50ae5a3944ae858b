//! Figures the daemon already keeps, read at each scrape rather than
//! counted a second time.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::language::Language;
use crate::request_counts::RequestCounts;
use crate::runtime::StartStats;

/// The daemon's own figures, as `GetDaemonStats` reports them.
pub trait LiveFigures: Send + Sync + 'static {
    /// Sessions, running executions and queued executions, now.
    fn load(&self) -> (u32, u32, u32);
    /// Warm and cold starts, and restarts of warm machinery, so far.
    fn start_stats(&self) -> StartStats;
}

/// Encodes [`LiveFigures`] and the request counts at each scrape.
pub(super) struct LiveCollector {
    pub(super) figures: Arc<dyn LiveFigures>,
    pub(super) requests: RequestCounts,
}

impl fmt::Debug for LiveCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveCollector").finish_non_exhaustive()
    }
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let (sessions, running, queued) = self.figures.load();
        for (name, help, value) in [
            ("elide_sessions", "Sessions the daemon holds", sessions),
            (
                "elide_executions_running",
                "Executions whose program is running",
                running,
            ),
            (
                "elide_executions_queued",
                "Executions waiting for a run slot (--max-running)",
                queued,
            ),
        ] {
            let gauge = ConstGauge::new(i64::from(value));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }

        let requests = self.requests.snapshot();
        let mut family = encoder.encode_descriptor(
            "elide_requests",
            "Requests served, by elide.daemon.v1 method",
            None,
            MetricType::Counter,
        )?;
        for (method, count) in requests {
            ConstCounter::new(count).encode(family.encode_family(&[("method", method)])?)?;
        }

        let starts = self.figures.start_stats();
        let mut family = encoder.encode_descriptor(
            "elide_executions_started",
            "Programs started, by language and how: warm (a python zygote fork or a pooled node worker) or cold (a fresh interpreter)",
            None,
            MetricType::Counter,
        )?;
        for (start, counts) in [("warm", &starts.warm), ("cold", &starts.cold)] {
            for language in Language::ALL {
                let count = counts.get(&language).copied().unwrap_or(0);
                let labels = [("language", language.name()), ("start", start)];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        let restarts = ConstCounter::new(starts.restarts);
        restarts.encode(encoder.encode_descriptor(
            "elide_warm_runtime_restarts",
            "Python zygotes and pooled node workers replaced after they died",
            None,
            restarts.metric_type(),
        )?)?;
        Ok(())
    }
}
