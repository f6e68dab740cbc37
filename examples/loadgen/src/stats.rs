//! Counters and HDR histograms, and how a worker hands them to the coordinator: histograms
//! serialized with hdrhistogram's V2 format, hex-encoded on one stdout line.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        // The bounds above are valid constants; this fallback is never taken.
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

/// Records `micros`, clamped into the histogram's range.
pub(crate) fn record(histogram: &mut Histogram<u64>, micros: u64) {
    let value = micros.clamp(1, histogram.high());
    let _ = histogram.record(value);
}

/// Hex of the V2 serialization of `histogram`.
pub(crate) fn encode(histogram: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    if V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .is_err()
    {
        return String::new();
    }
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The histogram a worker encoded with [`encode`].
pub(crate) fn decode(hex: &str) -> Result<Histogram<u64>, String> {
    if hex.is_empty() {
        return Ok(histogram());
    }
    let bytes: Result<Vec<u8>, _> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .ok_or_else(|| "odd hex length".to_owned())
                .and_then(|pair| u8::from_str_radix(pair, 16).map_err(|err| err.to_string()))
        })
        .collect();
    let bytes = bytes?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|err| format!("bad histogram: {err:?}"))
}

/// One step of a run (one sending rate), as counted by one worker.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    /// Payloads handed to the connections' write queues.
    pub(crate) sent: u64,
    /// Payloads received by connections other than their sender (each delivery counts).
    pub(crate) delivered: u64,
    /// Send acknowledgements (messenger `sent`).
    pub(crate) acked: u64,
    /// First and last delivery, ns since the Unix epoch (0 = none).
    pub(crate) first_delivery_ns: u64,
    /// Last delivery.
    pub(crate) last_delivery_ns: u64,
    /// Scheduled send → delivery, µs.
    pub(crate) delivery: Histogram<u64>,
    /// Scheduled send → acknowledgement, µs.
    pub(crate) ack: Histogram<u64>,
}

impl Step {
    pub(crate) fn new() -> Self {
        Step {
            sent: 0,
            delivered: 0,
            acked: 0,
            first_delivery_ns: 0,
            last_delivery_ns: 0,
            delivery: histogram(),
            ack: histogram(),
        }
    }

    pub(crate) fn report(&self) -> StepReport {
        StepReport {
            sent: self.sent,
            delivered: self.delivered,
            acked: self.acked,
            first_delivery_ns: self.first_delivery_ns,
            last_delivery_ns: self.last_delivery_ns,
            delivery: encode(&self.delivery),
            ack: encode(&self.ack),
        }
    }
}

/// Everything one worker counted.
#[derive(Debug)]
pub(crate) struct Stats {
    /// Per-step counters.
    pub(crate) steps: Vec<Step>,
    /// Connections that completed the session handshake.
    pub(crate) connected: u64,
    /// Connection attempts that failed (TCP, upgrade or handshake).
    pub(crate) failed: u64,
    /// Connections that ended while they should have stayed open.
    pub(crate) disconnects: u64,
    /// Error frames received.
    pub(crate) errors: u64,
    /// Payloads received twice (seq at or below the last one from that sender).
    pub(crate) duplicates: u64,
    /// Payloads that skipped a seq of their sender (a lost or reordered payload).
    pub(crate) gaps: u64,
    /// `receipt` frames received (messenger: watermarks moved by `--receipts`).
    pub(crate) receipts: u64,
    /// TCP connect → session usable, µs (the first round).
    pub(crate) handshake: Histogram<u64>,
    /// The same for the reconnect round.
    pub(crate) reconnect: Histogram<u64>,
    /// First connection attempt and last session ready of each round, ns since the epoch.
    pub(crate) rounds: [(u64, u64); 2],
    /// Reconnected sessions (second round).
    pub(crate) reconnected: u64,
}

impl Stats {
    pub(crate) fn new(steps: usize) -> Self {
        Stats {
            steps: (0..steps.max(1)).map(|_| Step::new()).collect(),
            connected: 0,
            failed: 0,
            disconnects: 0,
            errors: 0,
            duplicates: 0,
            gaps: 0,
            receipts: 0,
            handshake: histogram(),
            reconnect: histogram(),
            rounds: [(0, 0); 2],
            reconnected: 0,
        }
    }

    pub(crate) fn report(&self) -> WorkerReport {
        WorkerReport {
            steps: self.steps.iter().map(Step::report).collect(),
            connected: self.connected,
            failed: self.failed,
            disconnects: self.disconnects,
            errors: self.errors,
            duplicates: self.duplicates,
            gaps: self.gaps,
            receipts: self.receipts,
            handshake: encode(&self.handshake),
            reconnect: encode(&self.reconnect),
            rounds: self.rounds,
            reconnected: self.reconnected,
        }
    }

    pub(crate) fn progress(&self) -> Progress {
        Progress {
            connected: self.connected,
            failed: self.failed,
            sent: self.steps.iter().map(|s| s.sent).sum(),
            delivered: self.steps.iter().map(|s| s.delivered).sum(),
            acked: self.steps.iter().map(|s| s.acked).sum(),
            errors: self.errors,
            disconnects: self.disconnects,
        }
    }
}

/// A worker's progress line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Progress {
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
    pub(crate) acked: u64,
    pub(crate) errors: u64,
    pub(crate) disconnects: u64,
}

/// A step as a worker reports it (histograms hex-encoded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StepReport {
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
    pub(crate) acked: u64,
    pub(crate) first_delivery_ns: u64,
    pub(crate) last_delivery_ns: u64,
    pub(crate) delivery: String,
    pub(crate) ack: String,
}

/// A worker's final line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerReport {
    pub(crate) steps: Vec<StepReport>,
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    pub(crate) disconnects: u64,
    pub(crate) errors: u64,
    pub(crate) duplicates: u64,
    pub(crate) gaps: u64,
    pub(crate) receipts: u64,
    pub(crate) handshake: String,
    pub(crate) reconnect: String,
    pub(crate) rounds: [(u64, u64); 2],
    pub(crate) reconnected: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_hex_round_trip_and_merge() {
        let mut a = histogram();
        let mut b = histogram();
        for v in 1..=1000 {
            record(&mut a, v);
            record(&mut b, v * 1000);
        }
        let mut merged = decode(&encode(&a)).expect("decode a");
        merged
            .add(decode(&encode(&b)).expect("decode b"))
            .expect("add");
        assert_eq!(merged.len(), 2000);
        assert_eq!(merged.max(), b.max());
        assert!(decode("zz").is_err());
    }
}
