//! Counts of warm and cold program starts per language, and of warm
//! machinery (zygotes, pools) replaced after it died; what `GetDaemonStats`
//! reports. Shared by every warm-start mechanism of the process runtime.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::language::Language;

/// Start counts as reported through [`Runtime::start_stats`](super::Runtime::start_stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartStats {
    /// Programs started warm (zygote fork or pooled worker), by language.
    pub warm: BTreeMap<Language, u64>,
    /// Programs started as a fresh interpreter, by language.
    pub cold: BTreeMap<Language, u64>,
    /// Times a zygote or pool worker was replaced after it died.
    pub restarts: u64,
}

/// Lock-free counters behind [`StartStats`].
#[derive(Debug, Default)]
pub struct StartCounters {
    warm: [AtomicU64; 3],
    cold: [AtomicU64; 3],
    restarts: AtomicU64,
}

fn slot(language: Language) -> usize {
    match language {
        Language::Python => 0,
        Language::JavaScript => 1,
        Language::TypeScript => 2,
    }
}

impl StartCounters {
    /// One program of `language` started warm.
    pub fn warm_start(&self, language: Language) {
        self.warm[slot(language)].fetch_add(1, Ordering::Relaxed);
    }

    /// One program of `language` started cold.
    pub fn cold_start(&self, language: Language) {
        self.cold[slot(language)].fetch_add(1, Ordering::Relaxed);
    }

    /// A zygote or pool worker was replaced after it died.
    pub fn restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> StartStats {
        let by_language = |counters: &[AtomicU64; 3]| {
            Language::ALL
                .iter()
                .map(|&l| (l, counters[slot(l)].load(Ordering::Relaxed)))
                .collect()
        };
        StartStats {
            warm: by_language(&self.warm),
            cold: by_language(&self.cold),
            restarts: self.restarts.load(Ordering::Relaxed),
        }
    }
}
