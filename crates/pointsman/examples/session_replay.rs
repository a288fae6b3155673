//! What sessions save on multi-turn conversations with cached-input prices: a replay.
//!
//! Builds `N` conversations (200 by default) of 4 to 8 turns from the prompts of the repository's
//! routing data (each user turn is a prompt of `data/`, conversation by conversation in order),
//! and routes every turn through the shipped engine and catalog twice: without a session, and
//! with one (the server's `sessions::Sessions`, the code a `Route` with a session runs). After
//! each turn the chosen model's answer is appended as a text of its predicted length, so each run
//! builds its own conversations. A turn's cost is that of its first candidate on its first
//! endpoint: input at the input price, except the prefix the same endpoint saw on the previous
//! turn (previous input and answer) when the previous turn went to that same model and endpoint,
//! which is billed at the endpoint's cached-input price (`cached_input_usd_per_mtok`, when it has
//! one), plus the predicted answer at the output price. Both runs are billed alike: a run without
//! sessions also pays cached prices whenever it happens to stay on the same endpoint. Quality is
//! the head's predicted quality of each turn's first candidate.
//!
//! `--cached-fraction F` also gives every endpoint without a cached-input price one at `F` times
//! its input price (what if every provider cached prompts, as OpenAI does at 0.5).
//!
//!     cargo run --release --example session_replay -- [conversations] [--cached-fraction F] [profile ...]
use std::{collections::BTreeMap, sync::Arc};

use pointsman::{
    config::Config,
    encoder::text::ChatMessage,
    engine::{Decision, Engine, RouteQuery, Tradeoff},
    session::{SessionKey, SessionRequest},
    sessions::{Sessions, SessionsConfig},
};

/// One run's totals.
#[derive(Default, Debug)]
struct Totals {
    turns: usize,
    cost_usd: f64,
    /// Of which input billed at the cached price, USD.
    cached_usd: f64,
    quality: f64,
    /// Turns that went to the previous turn's model and endpoint.
    same_endpoint: usize,
    /// Turns routed to a different model than the previous turn.
    model_switches: usize,
    kept: usize,
    moved: usize,
    /// Session decisions by reason.
    reasons: BTreeMap<String, usize>,
}

/// Where the previous turn of a conversation went: (model, provider, input + answer tokens).
type Last = Option<(String, String, u32)>;

fn answer(words: u32, turn: usize) -> String {
    const WORDS: [&str; 12] = ["the", "answer", "covers", "each", "point", "in", "order", "with", "an", "example", "and", "detail"];
    let mut s = format!("Answer {turn}:");
    for i in 0..words as usize {
        s.push(' ');
        s.push_str(WORDS[(i * 7 + turn) % WORDS.len()]);
    }
    s
}

/// Bills one decision given where the conversation's previous turn went; returns the new `Last`.
fn bill(engine: &Engine, d: &Decision, last: &Last, t: &mut Totals) -> Last {
    let s = &d.ranking.scored[d.ranking.chosen[0]];
    let m = &engine.catalog().models()[s.model];
    let e = &m.endpoints[s.first_endpoint()];
    let p = s.prediction.expect("a chosen model has a prediction");
    let out = p.output_tokens.round().max(1.0);
    let input = f64::from(d.input_tokens);
    let cached_tokens = match last {
        Some((lm, lp, prefix)) if *lm == m.id && *lp == e.provider => {
            t.same_endpoint += 1;
            f64::from(*prefix).min(input)
        }
        Some((lm, _, _)) => {
            if *lm != m.id {
                t.model_switches += 1;
            }
            0.0
        }
        None => 0.0,
    };
    let cached_price = e.cached_input_usd_per_mtok.unwrap_or(e.input_usd_per_mtok);
    let cached_usd = cached_tokens * cached_price / 1e6;
    t.cost_usd += ((input - cached_tokens) * e.input_usd_per_mtok + out * e.output_usd_per_mtok) / 1e6 + cached_usd;
    t.cached_usd += cached_usd;
    t.quality += p.quality;
    t.turns += 1;
    Some((m.id.clone(), e.provider.clone(), d.input_tokens.saturating_add(out as u32)))
}

async fn replay(engine: &Arc<Engine>, conversations: &[Vec<String>], profile: &str, sessions: Option<&Sessions>) -> anyhow::Result<Totals> {
    let mut t = Totals::default();
    for (c, prompts) in conversations.iter().enumerate() {
        let mut messages: Vec<ChatMessage> = Vec::new();
        let mut last: Last = None;
        let key = SessionKey::of_id(&format!("{profile}-{c}"));
        for (turn, prompt) in prompts.iter().enumerate() {
            messages.push(ChatMessage::user(prompt.clone()));
            let q = RouteQuery {
                tradeoff: Tradeoff::Profile(profile.to_string()),
                ..RouteQuery::new(format!("replay-{c}-{turn}"), messages.clone(), 3)
            };
            let mut d = engine.route(q).await?;
            if let Some(s) = sessions {
                s.decide(engine, &mut d, SessionRequest { key, escalate_only: false });
                if let Some(o) = &d.session {
                    match o.verdict {
                        pointsman::session::Verdict::Kept => t.kept += 1,
                        pointsman::session::Verdict::Moved => t.moved += 1,
                        pointsman::session::Verdict::New => {}
                    }
                    // A rule that left the session's model out is named in the detail, in backticks.
                    let rule = o.detail.split('`').nth(1).filter(|_| o.reason == pointsman::session::Reason::ModelIneligible);
                    let key = rule.map_or_else(|| o.reason.as_str().to_string(), |r| format!("{} ({r})", o.reason.as_str()));
                    *t.reasons.entry(key).or_default() += 1;
                }
            }
            last = bill(engine, &d, &last, &mut t);
            let words = last.as_ref().map_or(0, |(_, _, n)| n - d.input_tokens);
            messages.push(ChatMessage { role: pointsman::encoder::text::Role::Assistant, content: answer(words, turn) });
        }
    }
    Ok(t)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = if args.first().is_some_and(|a| a.parse::<usize>().is_ok()) { args.remove(0).parse()? } else { 200 };
    let mut fraction = None;
    if let Some(i) = args.iter().position(|a| a == "--cached-fraction") {
        anyhow::ensure!(i + 1 < args.len(), "--cached-fraction takes a number in [0, 1]");
        fraction = Some(args[i + 1].parse::<f64>()?);
        args.drain(i..i + 2);
    }
    let mut profiles = args;
    let mut config = Config::load(&pointsman::config::locate_default())?;
    if let Some(f) = fraction {
        for e in config.models.iter_mut().flat_map(|m| m.endpoints.iter_mut()) {
            e.cached_input_usd_per_mtok.get_or_insert(f * e.input_usd_per_mtok);
        }
        println!("every endpoint without a cached-input price gets one at {f} x its input price");
    }
    if profiles.is_empty() {
        profiles = config.routing.profiles.keys().cloned().collect();
    }
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
    let files: Vec<_> = ["alpaca_eval2", "zeroeval", "mmlu_pro"].iter().map(|d| data.join(d).join("train.jsonl.gz")).collect();
    let logs = pointsman::learning::read_logs(&files, false)?;
    // Prompts in a fixed order, those of a reasonable size (a chat turn, not a document).
    let mut prompts: Vec<String> = logs.prompts.iter().map(|p| p.text.clone()).filter(|t| (20..4000).contains(&t.len())).collect();
    prompts.sort();
    prompts.dedup();
    let step = (prompts.len() / (n * 8)).max(1);
    let mut next = 0usize;
    let conversations: Vec<Vec<String>> = (0..n)
        .map(|c| {
            (0..4 + c % 5)
                .map(|_| {
                    let p = prompts[(next * step) % prompts.len()].clone();
                    next += 1;
                    p
                })
                .collect()
        })
        .collect();
    let turns: usize = conversations.iter().map(Vec::len).sum();
    let cached_models = config.models.iter().filter(|m| m.endpoints.iter().any(|e| e.cached_input_usd_per_mtok.is_some())).count();
    println!(
        "{n} conversations, {turns} turns (4 to 8 each), from {} distinct prompts of data/; {} catalog models, {cached_models} with a cached-input price",
        prompts.len(),
        config.models.len()
    );
    let mut cfg = config.clone();
    cfg.cache.capacity = 1 << 20;
    let engine = Arc::new(tokio::task::spawn_blocking(move || Engine::load(cfg.engine_config())).await??);
    println!("profile | cost without sessions | cost with sessions | saved | cached input billed (without / with) | turns on the previous endpoint (without / with) | model switches (without / with) | kept / moved | mean predicted quality (without / with)");
    for profile in &profiles {
        let without = replay(&engine, &conversations, profile, None).await?;
        let sessions = Sessions::new(&SessionsConfig::default());
        let with = replay(&engine, &conversations, profile, Some(&*sessions)).await?;
        let saved = without.cost_usd - with.cost_usd;
        println!(
            "{profile} | ${:.4} | ${:.4} | ${:.4} ({:.1}%) | ${:.4} / ${:.4} | {} / {} of {} | {} / {} | {} / {} | {:.4} / {:.4} ({:+.4})",
            without.cost_usd,
            with.cost_usd,
            saved,
            100.0 * saved / without.cost_usd,
            without.cached_usd,
            with.cached_usd,
            without.same_endpoint,
            with.same_endpoint,
            with.turns - n,
            without.model_switches,
            with.model_switches,
            with.kept,
            with.moved,
            without.quality / without.turns as f64,
            with.quality / with.turns as f64,
            (with.quality - without.quality) / with.turns as f64,
        );
        println!("  {profile}: session decisions by reason: {:?}", with.reasons);
    }
    Ok(())
}
