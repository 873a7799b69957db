//! The scheduler loop driven directly with jobs whose event sinks act at known points of a
//! step (a sink runs on the scheduler thread, in the middle of the step that produced its
//! event). Model: SmolLM2 int8 on the CPU backend, greedy.

use super::*;
use crate::plan::{BackendPlan, ModelChoice, RunPlan};
use lowbit_core::adapter::QuantPlan;
use lowbit_core::generate::SamplingParams;
use std::sync::mpsc::{self, Sender};
use std::sync::OnceLock;

fn model() -> Arc<dyn TextModel> {
    static M: OnceLock<Arc<dyn TextModel>> = OnceLock::new();
    M.get_or_init(|| {
        let dir = std::env::var_os("LOWBIT_MODELS_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
        let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(
            path.exists(),
            "{} is missing: run scripts/fetch-models.sh",
            path.display()
        );
        let defaults = RunPlan::default();
        let plan = RunPlan {
            model: ModelChoice::File(path),
            weights: QuantPlan::for_method("int8", 32, lowbit_core::quant::Scheme::Symmetric)
                .expect("int8"),
            backend: BackendPlan {
                name: "cpu".into(),
                ..defaults.backend.clone()
            },
            ..defaults
        };
        Arc::from(plan.load(&mut |_, _, _| {}).expect("loads").0)
    })
    .clone()
}

/// The default plan with requests of `n` tokens of context (the model is loaded above).
fn context(n: usize) -> RunPlan {
    let mut plan = RunPlan::default();
    plan.kv_cache.max_seq_len = n;
    plan
}

/// A fixed batch of up to 8 requests: every request admitted at once runs in the same step.
fn fixed_batch() -> InferenceConfig {
    InferenceConfig {
        plan: context(128),
        initial_batch_size: 8,
        max_batch_size: 8,
        adaptive_batch_size: false,
        ..InferenceConfig::default()
    }
}

fn shared(model: &dyn TextModel) -> Arc<Shared> {
    Arc::new(Shared {
        latency_mode: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
        batch_size: AtomicUsize::new(0),
        stats: Mutex::new(StatsAccumulator::new(model.weight_bytes())),
        handlers: Default::default(),
    })
}

/// What a request ended with: its token ids and finish reason, or the error code.
type Outcome = Result<(Vec<u32>, FinishReason), &'static str>;

/// A greedy job for `prompt` whose terminal event goes to `done` under `name`; `on_token` runs
/// (on the scheduler thread) for every token event.
fn job(
    shared: &Arc<Shared>,
    name: &'static str,
    prompt: &str,
    max_tokens: usize,
    done: Sender<(&'static str, Outcome)>,
    mut on_token: impl FnMut() + Send + 'static,
) -> (Job, Arc<AtomicBool>) {
    let cancel = Arc::new(AtomicBool::new(false));
    let opts = GenerateOptions {
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        cancel: Some(cancel.clone()),
        ..Default::default()
    };
    let sink: EventSink = Box::new(move |ev| {
        match ev {
            TokenEvent::Token { .. } => on_token(),
            TokenEvent::Done(c) => {
                let _ = done.send((name, Ok((c.tokens, c.finish_reason))));
            }
            TokenEvent::Error(e) => {
                let _ = done.send((name, Err(e.code())));
            }
        }
        true
    });
    let (slot, _) = Slot::take(shared.clone());
    let job = Job {
        id: 0,
        prompt: model().tokenizer().encode(prompt, true).expect("encodes"),
        opts,
        cancel: cancel.clone(),
        sink,
        submitted: Instant::now(),
        slot,
    };
    (job, cancel)
}

/// Runs the scheduler over `jobs` (submitted before it starts) until every sender is gone;
/// returns the outcomes by name.
fn run_jobs(
    shared: Arc<Shared>,
    config: InferenceConfig,
    jobs: Vec<Job>,
    senders: Vec<Sender<Job>>,
    rx: Receiver<Job>,
    done: Receiver<(&'static str, Outcome)>,
) -> std::collections::BTreeMap<&'static str, Outcome> {
    let tx = senders.into_iter().next();
    if let Some(tx) = &tx {
        for j in jobs {
            tx.send(j).expect("scheduler channel open");
        }
    }
    drop(tx);
    let t = std::thread::spawn(move || run(model(), config, shared, rx));
    t.join().expect("the scheduler thread does not panic");
    done.try_iter().collect()
}

/// The greedy tokens of `prompt` run alone.
fn solo(prompt: &str, n: usize) -> Vec<u32> {
    let sh = shared(model().as_ref());
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let (j, _) = job(&sh, "solo", prompt, n, done_tx, || {});
    let out = run_jobs(sh, fixed_batch(), vec![j], vec![tx], rx, done_rx);
    match &out["solo"] {
        Ok((tokens, _)) => tokens.clone(),
        Err(code) => panic!("the solo run failed: {code}"),
    }
}

#[test]
fn requests_cancelled_after_the_batch_is_formed_fail_no_other_request() {
    let sh = shared(model().as_ref());
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let n = 10;
    let keepers = [
        ("keeper_a", "The capital of France is"),
        ("keeper_b", "Once upon a time"),
    ];
    let (victim_a, cancel_a) = job(
        &sh,
        "victim_a",
        "One, two, three,",
        n,
        done_tx.clone(),
        || {},
    );
    let (victim_b, cancel_b) = job(&sh, "victim_b", "Water boils at", n, done_tx.clone(), || {});
    // The trigger is admitted in step 2, after the four others were prefilled in step 1, so in
    // step 2 it is prefilled (its first token delivered, and its sink run) after the four
    // others have joined that step's batch and before the batched forward pass: exactly where
    // a network thread's `stop` landed when the race failed every request of the batch.
    let mut victims = Some((cancel_a, cancel_b));
    let (trigger, _) = job(&sh, "trigger", "Hello", 3, done_tx.clone(), move || {
        if let Some((a, b)) = victims.take() {
            a.store(true, Ordering::Relaxed);
            b.store(true, Ordering::Relaxed);
        }
    });
    // The first keeper submits the trigger when its own first token arrives (step 1).
    let mut trigger = Some((trigger, tx.clone()));
    let (keeper_a, _) = job(
        &sh,
        keepers[0].0,
        keepers[0].1,
        n,
        done_tx.clone(),
        move || {
            if let Some((j, tx)) = trigger.take() {
                tx.send(j).expect("scheduler channel open");
            }
        },
    );
    let (keeper_b, _) = job(&sh, keepers[1].0, keepers[1].1, n, done_tx, || {});
    let out = run_jobs(
        sh.clone(),
        fixed_batch(),
        vec![keeper_a, keeper_b, victim_a, victim_b],
        vec![tx],
        rx,
        done_rx,
    );
    assert_eq!(out.len(), 5, "every request ends once: {out:?}");
    for (name, prompt) in keepers {
        match &out[name] {
            Ok((tokens, reason)) => {
                assert_eq!(*reason, FinishReason::Length, "{name}");
                assert_eq!(
                    *tokens,
                    solo(prompt, n),
                    "{name}: greedy output as run alone"
                );
            }
            Err(code) => panic!("{name} failed with {code} when other requests were cancelled"),
        }
    }
    for name in ["victim_a", "victim_b"] {
        match &out[name] {
            Ok((tokens, reason)) => {
                assert_eq!(*reason, FinishReason::Cancelled, "{name}");
                assert!(tokens.len() < n, "{name} stopped early: {tokens:?}");
            }
            Err(code) => panic!("{name} failed with {code} instead of ending cancelled"),
        }
    }
    assert!(out["trigger"].is_ok(), "{:?}", out["trigger"]);
    assert_eq!(sh.in_flight.load(Ordering::SeqCst), 0);
}

#[test]
fn the_adaptive_batch_grows_under_load_and_falls_back_when_the_load_is_gone() {
    let sh = shared(model().as_ref());
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    // A latency target no step misses: the batch grows by one per step while requests wait.
    let config = InferenceConfig {
        plan: context(64),
        initial_batch_size: 2,
        max_batch_size: 8,
        adaptive_batch_size: true,
        target_token_latency: std::time::Duration::from_secs(3600),
        ..InferenceConfig::default()
    };
    let names = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"];
    let jobs: Vec<Job> = names
        .iter()
        .map(|name| {
            job(
                &sh,
                name,
                "The capital of France is",
                6,
                done_tx.clone(),
                || {},
            )
            .0
        })
        .collect();
    drop(done_tx);
    let out = run_jobs(sh.clone(), config, jobs, vec![tx], rx, done_rx);
    assert_eq!(out.len(), names.len());
    assert!(out.values().all(|o| o.is_ok()), "{out:?}");
    let stats = lock(&sh.stats).snapshot();
    let sizes: Vec<usize> = stats
        .batch_size_history
        .iter()
        .map(|c| c.batch_size)
        .collect();
    let peak = sizes.iter().copied().max().unwrap_or(0);
    assert!(peak > 2, "the batch grew while requests waited: {sizes:?}");
    assert_eq!(
        sh.batch_size.load(Ordering::Relaxed),
        2,
        "back to the initial size once the load is gone: {sizes:?}"
    );
    assert_eq!(
        stats.batch_size_history.last().map(|c| c.reason),
        Some("load_fell")
    );
}
