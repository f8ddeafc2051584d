//! Prometheus metrics (names prefixed `provisiond_`; no labels carry ids or secrets).

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The metric families.
pub struct Metrics {
    registry: Registry,
    /// requests by route pattern, method and status
    pub http_requests: IntCounterVec,
    /// latency by route pattern
    pub http_duration: HistogramVec,
    /// failed authentications by scheme
    pub auth_failures: IntCounterVec,
    /// registrations by door (`json`, `ndjson`, `self`, `dps_http`, `dps_mqtt`, `aws`, `est`) and outcome: no ids
    pub registrations: IntCounterVec,
    /// open MQTT connections
    pub mqtt_open: IntGauge,
    /// MQTT connection attempts by personality (`dps`, `aws`, `none`) and result (`accepted`,
    /// `refused`, `over_limit`)
    pub mqtt_connects: IntCounterVec,
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "provisiond_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("provisiond_http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            &["route"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new("provisiond_auth_failures_total", "Failed authentications by scheme"),
            &["scheme"],
        )?;
        let registrations = IntCounterVec::new(
            Opts::new("provisiond_registrations_total", "Registrations by door and outcome"),
            &["door", "outcome"],
        )?;
        let mqtt_open =
            IntGauge::new("provisiond_mqtt_connections", "Open MQTT device connections")?;
        let mqtt_connects = IntCounterVec::new(
            Opts::new(
                "provisiond_mqtt_connects_total",
                "MQTT connection attempts by personality and result",
            ),
            &["personality", "result"],
        )?;
        registry.register(Box::new(mqtt_open.clone()))?;
        registry.register(Box::new(mqtt_connects.clone()))?;
        registry.register(Box::new(registrations.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            auth_failures,
            registrations,
            mqtt_open,
            mqtt_connects,
        })
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
