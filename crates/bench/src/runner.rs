//! A whole run: setup (connect, metadata, inputs, server metrics), then each step in turn.

use std::sync::Arc;

use tokio::time::Instant;

use crate::config::{BenchConfig, InputSource, LoadLevel, Protocol};
use crate::inputs::{load_samples, RequestFactory};
use crate::load::{run_closed, run_open, LiveCounts, StepContext, Window};
use crate::progress::StepProgress;
use crate::result::{BenchReport, LoadMode, StepResult, SCHEMA_VERSION};
use crate::rng::SplitMix64;
use crate::server_side::{read_rss, MetricsScraper, RssMonitor};
use crate::transport::{Client, Prepared};
use crate::BenchError;

/// Runs every step of `config` against the server and returns the results. Fails only on
/// setup (unreachable server, unknown model, unusable inputs); failed requests are results.
pub async fn run(config: &BenchConfig) -> Result<BenchReport, BenchError> {
    let client = Client::connect(config).await?;
    let model = client.metadata().await?;
    let samples = load_samples(&config.inputs.source)?;
    let mut factory = RequestFactory::new(&model, &config.inputs, samples)?;
    let requests: Arc<[Prepared]> = (0..factory.count())
        .map(|i| factory.make(i).and_then(|inputs| client.prepare(&inputs)))
        .collect::<Result<Vec<_>, _>>()?
        .into();
    let batch = if model.batching() { config.inputs.batch } else { 1 };
    let scraper = metrics_scraper(config).await?;
    if let Some(pid) = config.server_pid {
        read_rss(pid).map_err(|reason| BenchError::ServerPid { pid, reason })?;
    }
    probe(&client, &requests[0], config).await;

    let mut report = BenchReport {
        schema: SCHEMA_VERSION,
        url: config.endpoint.to_string(),
        model: model.name.clone(),
        model_version: config.model_version.clone(),
        protocol: config.protocol.as_str().to_string(),
        inputs: describe_inputs(config),
        distinct_requests: requests.len(),
        steps: Vec::with_capacity(config.levels.len()),
    };
    let run = Run { config, client: &client, requests: &requests, scraper: scraper.as_ref(), batch };
    for (index, &level) in config.levels.iter().enumerate() {
        report.steps.push(run.step(level, index).await?);
    }
    Ok(report)
}

/// What every step of a run shares.
struct Run<'a> {
    config: &'a BenchConfig,
    client: &'a Client,
    requests: &'a Arc<[Prepared]>,
    scraper: Option<&'a MetricsScraper>,
    /// Rows per request as sent.
    batch: usize,
}

/// Reads the server's metrics once to see whether they are there: an error when
/// `--metrics-url` was given, a note when it was only the default.
async fn metrics_scraper(config: &BenchConfig) -> Result<Option<MetricsScraper>, BenchError> {
    let Some(source) = &config.metrics else { return Ok(None) };
    let scraper = MetricsScraper::new(
        source.url.clone(),
        config.model.clone(),
        config.model_version.clone(),
        &config.credentials,
    )?;
    match scraper.scrape().await {
        Ok(_) => Ok(Some(scraper)),
        Err(reason) if source.explicit => Err(BenchError::Metrics { url: source.url.clone(), reason }),
        Err(reason) => {
            tracing::info!("no server-side figures: {}: {reason}", source.url);
            Ok(None)
        }
    }
}

/// Sends one request before the load, so that a request the server refuses is reported
/// once, up front, rather than only as a column of errors.
async fn probe(client: &Client, request: &Prepared, config: &BenchConfig) {
    let outcome = match client.lane(config.protocol == Protocol::GrpcStream).await {
        Ok(lane) => tokio::time::timeout(config.timeout, lane.infer(request)).await,
        Err(e) => {
            tracing::warn!("a first request could not be sent: {e}");
            return;
        }
    };
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("a first request failed ({}): {}", e.kind.label(), e.message),
        Err(_) => tracing::warn!("a first request got no answer within {:?}", config.timeout),
    }
}

fn describe_inputs(config: &BenchConfig) -> String {
    match &config.inputs.source {
        InputSource::Random => format!("random inputs (seed {})", config.inputs.seed),
        InputSource::Json(path) => format!("inputs from {}", path.display()),
        InputSource::Npy(files) => format!(
            "inputs from {}",
            files.iter().map(|(n, p)| format!("{n}={}", p.display())).collect::<Vec<_>>().join(" ")
        ),
    }
}

impl Run<'_> {
    /// Step `index` of the run, at `level`.
    async fn step(&self, level: LoadLevel, index: usize) -> Result<StepResult, BenchError> {
        let Run { config, client, requests, scraper, batch } = *self;
        let stream = config.protocol == Protocol::GrpcStream;
        let lanes = match level {
            LoadLevel::Concurrency(c) => {
                let mut lanes = Vec::with_capacity(c);
                for _ in 0..c {
                    lanes.push(client.lane(stream).await?);
                }
                lanes
            }
            LoadLevel::Rate(_) => vec![client.lane(stream).await?],
        };
        let window = Window::new(Instant::now(), config.warmup, config.duration);
        let live = Arc::new(LiveCounts::default());
        let label = format!("{level} [{}/{}]", index + 1, config.levels.len());
        let progress = StepProgress::start(config.progress, label, window, live.clone());
        let rss = config.server_pid.map(RssMonitor::start);
        let before = scraper.cloned().map(|s| {
            tokio::spawn(async move {
                tokio::time::sleep_until(window.measure_from).await;
                s.scrape().await
            })
        });
        let ctx = StepContext { requests: requests.clone(), window, timeout: config.timeout, live };
        let stats = match level {
            LoadLevel::Concurrency(_) => run_closed(lanes, ctx).await,
            LoadLevel::Rate(rate) => {
                let seed = SplitMix64::derive(config.inputs.seed, index as u64 + 1).next_u64();
                let lane = lanes.into_iter().next().ok_or_else(|| BenchError::Config("no lane".into()))?;
                run_open(lane, ctx, rate, seed, config.max_inflight).await
            }
        };
        let after = match scraper {
            Some(s) => s.scrape().await.ok(),
            None => None,
        };
        let before = match before {
            Some(task) => task.await.ok().and_then(Result::ok),
            None => None,
        };
        progress.finish();
        let duration_s = config.duration.as_secs_f64();
        let throughput_rps = stats.successes() as f64 / duration_s;
        Ok(StepResult {
            mode: match level {
                LoadLevel::Concurrency(_) => LoadMode::Closed,
                LoadLevel::Rate(_) => LoadMode::Open,
            },
            concurrency: match level {
                LoadLevel::Concurrency(c) => Some(c),
                LoadLevel::Rate(_) => None,
            },
            offered_rps: match level {
                LoadLevel::Rate(r) => Some(r),
                LoadLevel::Concurrency(_) => None,
            },
            protocol: config.protocol.as_str().to_string(),
            batch,
            warmup_s: config.warmup.as_secs_f64(),
            duration_s,
            requests: stats.requests(),
            successes: stats.successes(),
            throughput_rps,
            inferences_per_s: throughput_rps * batch as f64,
            latency_us: stats.latency(),
            rejected_latency_us: stats.rejected_latency(),
            send_lag_us: stats.send_lag(),
            errors: stats.errors(),
            error_sample: stats.first_error().map(str::to_string),
            server: before.zip(after).and_then(|(b, a)| a.since(&b)),
            server_peak_rss_bytes: rss.and_then(RssMonitor::stop),
        })
    }
}
