//! `Route` end to end against the real server: rankings, trade-off, constraints, fallbacks,
//! determinism under load, and every bad input's status.
mod common;

use common::{TestServer, CHAT_PROMPT, MATH_PROMPT};
use pointsman::pb::{self, ExclusionReason, RouteRequest};
use tonic::Code;

fn prompt(p: &str) -> RouteRequest {
    RouteRequest { prompt: p.into(), ..Default::default() }
}

fn models(r: &pb::RouteResponse) -> Vec<String> {
    r.candidates.iter().map(|c| c.model.clone()).collect()
}

#[tokio::test]
async fn math_and_chat_get_different_rankings() {
    let mut s = TestServer::start().await;
    let math = s.client.route(RouteRequest { cost_weight: Some(0.0), ..prompt(MATH_PROMPT) }).await.unwrap().into_inner();
    let chat = s.client.route(RouteRequest { cost_weight: Some(0.0), ..prompt(CHAT_PROMPT) }).await.unwrap().into_inner();
    assert_eq!(math.candidates.len(), 4, "primary + 3 fallbacks by default");
    assert_ne!(models(&math), models(&chat), "math and chit-chat ranked the same");
    for r in [&math, &chat] {
        assert!(!r.request_id.is_empty(), "request id generated");
        assert!(r.router_version.starts_with(env!("CARGO_PKG_VERSION")));
        for c in &r.candidates {
            assert!((0.0..=1.0).contains(&c.predicted_quality));
            assert!(c.predicted_output_tokens >= 1 && c.predicted_cost_usd > 0.0 && c.predicted_latency_ms > 0.0);
        }
        // Ranked by utility, which at weight 0 is quality.
        assert!(r.candidates.windows(2).take(2).all(|w| w[0].utility >= w[1].utility));
    }
    // The math prompt is predicted to need more output than a one-line chat answer? Not always;
    // but it must be predicted harder for a cheap model than for the primary.
    s.shutdown().await;
}

#[tokio::test]
async fn cost_weight_one_picks_cheaper_primary_than_zero() {
    let mut s = TestServer::start().await;
    for p in [MATH_PROMPT, CHAT_PROMPT] {
        let q = s.client.route(RouteRequest { cost_weight: Some(0.0), ..prompt(p) }).await.unwrap().into_inner();
        let c = s.client.route(RouteRequest { cost_weight: Some(1.0), ..prompt(p) }).await.unwrap().into_inner();
        assert!(
            c.candidates[0].predicted_cost_usd < q.candidates[0].predicted_cost_usd / 5.0,
            "weight 1 primary {} ${} vs weight 0 primary {} ${}",
            c.candidates[0].model,
            c.candidates[0].predicted_cost_usd,
            q.candidates[0].model,
            q.candidates[0].predicted_cost_usd
        );
        assert!(q.candidates[0].predicted_quality > c.candidates[0].predicted_quality);
        // Weight 1 with a quality floor: the cheapest model that meets it.
        let floor = 0.5 * (q.candidates[0].predicted_quality + c.candidates[0].predicted_quality);
        let f = s
            .client
            .route(RouteRequest { cost_weight: Some(1.0), min_quality: Some(floor), explain: true, ..prompt(p) })
            .await
            .unwrap()
            .into_inner();
        assert!(f.candidates.iter().all(|c| c.predicted_quality >= floor));
        let cheapest_ok = f
            .explanations
            .iter()
            .filter(|e| ![ExclusionReason::NotCovered as i32, ExclusionReason::OutOfDomain as i32].contains(&e.reason))
            .filter_map(|e| e.candidate.as_ref())
            .filter(|c| c.predicted_quality >= floor)
            .map(|c| c.predicted_cost_usd)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(f.candidates[0].predicted_cost_usd, cheapest_ok);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn deny_and_allow_lists_are_honoured() {
    let mut s = TestServer::start().await;
    let base = s.client.route(prompt(MATH_PROMPT)).await.unwrap().into_inner();
    let top = base.candidates[0].clone();
    let r = s
        .client
        .route(RouteRequest { denied_models: vec![top.model.clone()], explain: true, ..prompt(MATH_PROMPT) })
        .await
        .unwrap()
        .into_inner();
    assert!(!models(&r).contains(&top.model));
    let e = r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == top.model).unwrap();
    assert_eq!(e.reason, ExclusionReason::ModelNotAllowed as i32);

    let r =
        s.client.route(RouteRequest { denied_providers: vec![top.provider.clone()], ..prompt(MATH_PROMPT) }).await.unwrap().into_inner();
    assert!(r.candidates.iter().all(|c| c.provider != top.provider));

    let r = s.client.route(RouteRequest { allowed_providers: vec!["anthropic".into()], ..prompt(MATH_PROMPT) }).await.unwrap().into_inner();
    assert!(!r.candidates.is_empty() && r.candidates.iter().all(|c| c.provider == "anthropic"));

    let allowed = vec![base.candidates[2].model.clone(), base.candidates[3].model.clone()];
    let r = s.client.route(RouteRequest { allowed_models: allowed.clone(), ..prompt(MATH_PROMPT) }).await.unwrap().into_inner();
    let mut got = models(&r);
    got.sort();
    let mut want = allowed;
    want.sort();
    assert_eq!(got, want);
    s.shutdown().await;
}

#[tokio::test]
async fn budget_and_context_window_are_honoured() {
    let mut s = TestServer::start().await;
    let all = s.client.route(RouteRequest { explain: true, ..prompt(MATH_PROMPT) }).await.unwrap().into_inner();
    let mut costs: Vec<f64> = all
        .explanations
        .iter()
        .filter(|e| e.reason != ExclusionReason::NotCovered as i32)
        .map(|e| e.candidate.as_ref().unwrap().predicted_cost_usd)
        .collect();
    costs.sort_by(f64::total_cmp);
    let budget = costs[costs.len() / 4];
    let r = s
        .client
        .route(RouteRequest { max_cost_usd: Some(budget), cost_weight: Some(0.0), explain: true, ..prompt(MATH_PROMPT) })
        .await
        .unwrap()
        .into_inner();
    assert!(r.candidates.iter().all(|c| c.predicted_cost_usd <= budget));
    assert!(r.explanations.iter().any(|e| e.reason == ExclusionReason::Budget as i32));

    // About 9,000 input tokens: models with an 8k window must be left out.
    let long = format!("{} {}", "Please summarise the following report carefully.", "the quarterly numbers were strong ".repeat(1900));
    let r = s.client.route(RouteRequest { explain: true, max_fallbacks: Some(8), ..prompt(&long) }).await.unwrap().into_inner();
    assert!(r.input_tokens > 8192, "input tokens {}", r.input_tokens);
    let catalog = s.client.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner();
    let small: Vec<&str> = catalog.models.iter().filter(|m| m.context_tokens <= 8192).map(|m| m.model.as_str()).collect();
    assert!(!small.is_empty(), "the catalog has 8k-window models to exclude");
    for c in &r.candidates {
        assert!(!small.contains(&c.model.as_str()), "{} cannot hold {} tokens", c.model, r.input_tokens);
    }
    for e in &r.explanations {
        let m = &e.candidate.as_ref().unwrap().model;
        // Rules before the context window (coverage, domain) may have claimed it first.
        let earlier = [ExclusionReason::NotCovered as i32, ExclusionReason::OutOfDomain as i32];
        if small.contains(&m.as_str()) && !earlier.contains(&e.reason) {
            assert_eq!(e.reason, ExclusionReason::ContextWindow as i32, "{m}: {}", e.detail);
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn fallbacks_span_providers_and_respect_the_count() {
    let mut s = TestServer::start().await;
    for p in [MATH_PROMPT, CHAT_PROMPT] {
        for n in [1u32, 3, 8] {
            for w in [0.0, 0.5, 1.0] {
                let r =
                    s.client.route(RouteRequest { max_fallbacks: Some(n), cost_weight: Some(w), ..prompt(p) }).await.unwrap().into_inner();
                assert_eq!(r.candidates.len(), n as usize + 1);
                let primary = &r.candidates[0].provider;
                assert!(
                    r.candidates[1..].iter().any(|c| &c.provider != primary),
                    "no other provider among fallbacks at n={n} w={w}: {:?}",
                    models(&r)
                );
            }
        }
    }
    let r = s.client.route(RouteRequest { max_fallbacks: Some(0), ..prompt(CHAT_PROMPT) }).await.unwrap().into_inner();
    assert_eq!(r.candidates.len(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn conversations_and_request_ids() {
    let mut s = TestServer::start().await;
    let conv = RouteRequest {
        request_id: "gateway-42".into(),
        messages: vec![
            pb::Message { role: "system".into(), content: "You are a helpful assistant.".into() },
            pb::Message { role: "user".into(), content: MATH_PROMPT.into() },
            pb::Message { role: "assistant".into(), content: "Let me think about it.".into() },
            pb::Message { role: "user".into(), content: "go on".into() },
        ],
        cost_weight: Some(0.0),
        ..Default::default()
    };
    let r = s.client.route(conv).await.unwrap().into_inner();
    assert_eq!(r.request_id, "gateway-42");
    // Input tokens count the whole conversation, not just the routing text.
    let single = s.client.route(prompt(MATH_PROMPT)).await.unwrap().into_inner();
    assert!(r.input_tokens > single.input_tokens + 10, "{} vs {}", r.input_tokens, single.input_tokens);
    s.shutdown().await;
}

#[tokio::test]
async fn agent_turns_are_routed_on_the_user_intent_and_the_tool_results_after_it() {
    let mut s = TestServer::start().await;
    let msg = |role: &str, content: &str| pb::Message { role: role.into(), content: content.into() };
    let question = "Which of these two flights is cheaper, and by how much? Use the fare tool for both.";
    let agent = RouteRequest {
        messages: vec![
            msg("developer", "You are a travel agent with a fare tool."),
            msg("user", question),
            // An assistant turn that only calls tools has no content.
            msg("assistant", ""),
            msg("tool", "{\"flight\": \"SK1470\", \"fare_eur\": 129}"),
            msg("function", "{\"flight\": \"DY620\", \"fare_eur\": 99}"),
        ],
        requirements: Some(pb::Requirements { tools: true, ..Default::default() }),
        ..Default::default()
    };
    let r = s.client.route(agent.clone()).await.unwrap().into_inner();
    assert!(!r.candidates.is_empty());
    assert!(!r.timings.unwrap().cache_hit);
    // The same routing text from another conversation (the user turn and the two results, no
    // system or assistant turn) is a cache hit: that text is what the agent turn was routed on.
    let same_text = RouteRequest {
        messages: vec![msg("user", question), msg("tool", &agent.messages[3].content), msg("tool", &agent.messages[4].content)],
        ..Default::default()
    };
    assert!(s.client.route(same_text).await.unwrap().into_inner().timings.unwrap().cache_hit);
    // Without the newest result it is another text.
    let fewer = RouteRequest { messages: agent.messages[..4].to_vec(), ..Default::default() };
    assert!(!s.client.route(fewer).await.unwrap().into_inner().timings.unwrap().cache_hit);
    // Control characters never reach the routing text: with and without them, one text.
    let nul = s.client.route(prompt("What is 2+2?\u{0}\u{7}")).await.unwrap().into_inner();
    assert!(!nul.timings.unwrap().cache_hit);
    assert!(s.client.route(prompt("What is 2+2?")).await.unwrap().into_inner().timings.unwrap().cache_hit);
    s.shutdown().await;
}

#[tokio::test]
async fn cache_hits_return_the_same_ranking() {
    let mut s = TestServer::start().await;
    let a = s.client.route(prompt(CHAT_PROMPT)).await.unwrap().into_inner();
    let b = s.client.route(prompt(CHAT_PROMPT)).await.unwrap().into_inner();
    assert!(!a.timings.unwrap().cache_hit && b.timings.unwrap().cache_hit);
    assert_eq!(b.timings.unwrap().encode_us, 0);
    assert_eq!(a.candidates, b.candidates);
    s.shutdown().await;
}

#[tokio::test]
async fn same_request_same_ranking_under_concurrent_load() {
    // Cache off, so every call really runs the encoder while other prompts are in flight.
    let mut config = common::shipped_config();
    config.cache.capacity = 0;
    let mut s = TestServer::start_with(config).await;
    let probe = RouteRequest { cost_weight: Some(0.3), max_fallbacks: Some(8), ..prompt(MATH_PROMPT) };
    let reference = s.client.route(probe.clone()).await.unwrap().into_inner().candidates;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..48 {
        let mut client = s.client.clone();
        let probe = probe.clone();
        tasks.spawn(async move {
            if i % 3 == 0 {
                Some(client.route(probe).await.unwrap().into_inner().candidates)
            } else {
                let other = format!("Write a {i}-line poem about {} in the style of a pirate.", "the sea ".repeat(i));
                client.route(prompt(&other)).await.unwrap();
                None
            }
        });
    }
    let mut checked = 0;
    while let Some(r) = tasks.join_next().await {
        if let Some(c) = r.unwrap() {
            assert_eq!(c, reference, "ranking changed under load");
            checked += 1;
        }
    }
    assert_eq!(checked, 16);
    s.shutdown().await;
}

async fn expect_status(s: &mut TestServer, req: RouteRequest, code: Code, needles: &[&str]) {
    let err = s.client.route(req.clone()).await.expect_err(&format!("{req:?} should fail"));
    assert_eq!(err.code(), code, "{}", err.message());
    for n in needles {
        assert!(err.message().contains(n), "message {:?} lacks {n:?}", err.message());
    }
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_naming_field_limit_and_value() {
    let mut s = TestServer::start().await;
    let ia = Code::InvalidArgument;
    expect_status(&mut s, RouteRequest::default(), ia, &["messages"]).await;
    expect_status(&mut s, prompt("   "), ia, &["prompt", "whitespace"]).await;
    let empty_content = RouteRequest { messages: vec![pb::Message { role: "user".into(), content: "".into() }], ..Default::default() };
    expect_status(&mut s, empty_content, ia, &["messages", "none with text"]).await;
    let control_only =
        RouteRequest { messages: vec![pb::Message { role: "user".into(), content: "\u{0}\u{1}".into() }], ..Default::default() };
    expect_status(&mut s, control_only, ia, &["messages", "none with text"]).await;
    let bad_role = RouteRequest { messages: vec![pb::Message { role: "wizard".into(), content: "hi".into() }], ..Default::default() };
    expect_status(&mut s, bad_role, ia, &["messages[0].role", "wizard"]).await;
    let both = RouteRequest { messages: vec![pb::Message { role: "user".into(), content: "hi".into() }], ..prompt("hi") };
    expect_status(&mut s, both, ia, &["prompt"]).await;
    expect_status(&mut s, RouteRequest { cost_weight: Some(1.5), ..prompt("hi") }, ia, &["cost_weight", "[0, 1]", "1.5"]).await;
    expect_status(&mut s, RouteRequest { cost_weight: Some(-0.1), ..prompt("hi") }, ia, &["cost_weight", "-0.1"]).await;
    expect_status(&mut s, RouteRequest { cost_weight: Some(f64::NAN), ..prompt("hi") }, ia, &["cost_weight", "NaN"]).await;
    expect_status(&mut s, RouteRequest { profile: "turbo".into(), ..prompt("hi") }, ia, &["profile", "turbo", "balanced"]).await;
    expect_status(&mut s, RouteRequest { profile: "balanced".into(), cost_weight: Some(0.2), ..prompt("hi") }, ia, &["profile"]).await;
    expect_status(&mut s, RouteRequest { allowed_models: vec!["gpt-17".into()], ..prompt("hi") }, ia, &["allowed_models", "gpt-17"]).await;
    expect_status(&mut s, RouteRequest { denied_models: vec!["nope".into()], ..prompt("hi") }, ia, &["denied_models", "nope"]).await;
    expect_status(&mut s, RouteRequest { allowed_providers: vec!["acme".into()], ..prompt("hi") }, ia, &["allowed_providers", "acme"])
        .await;
    expect_status(&mut s, RouteRequest { max_fallbacks: Some(12), ..prompt("hi") }, ia, &["max_fallbacks", "8", "12"]).await;
    expect_status(&mut s, RouteRequest { min_quality: Some(2.0), ..prompt("hi") }, ia, &["min_quality", "2"]).await;
    expect_status(&mut s, RouteRequest { max_cost_usd: Some(-1.0), ..prompt("hi") }, ia, &["max_cost_usd", "-1"]).await;
    expect_status(&mut s, RouteRequest { max_cost_usd: Some(f64::INFINITY), ..prompt("hi") }, ia, &["max_cost_usd", "inf"]).await;
    expect_status(&mut s, RouteRequest { request_id: "x".repeat(200), ..prompt("hi") }, ia, &["request_id", "128", "200"]).await;
    let many = RouteRequest {
        messages: (0..1100).map(|_| pb::Message { role: "user".into(), content: "hi".into() }).collect(),
        ..Default::default()
    };
    expect_status(&mut s, many, ia, &["messages", "1024", "1100"]).await;
    // A client's value is echoed, but never in full.
    let long_name = RouteRequest { allowed_models: vec![format!("gpt-{}", "9".repeat(5000))], ..prompt("hi") };
    let err = s.client.route(long_name).await.unwrap_err();
    assert!(err.message().contains("allowed_models") && err.message().len() < 300, "{}", err.message());
    let huge = prompt(&"a".repeat(1_200_000));
    expect_status(&mut s, huge, ia, &["bytes", "1048576"]).await;

    // Constraints that exclude every model: FAILED_PRECONDITION naming the constraint.
    let fp = Code::FailedPrecondition;
    expect_status(&mut s, RouteRequest { max_cost_usd: Some(1e-12), ..prompt("hi") }, fp, &["max_cost_usd"]).await;
    expect_status(&mut s, RouteRequest { min_quality: Some(1.0), ..prompt("hi") }, fp, &["min_quality"]).await;
    let both_lists =
        RouteRequest { allowed_providers: vec!["anthropic".into()], denied_providers: vec!["anthropic".into()], ..prompt("hi") };
    expect_status(&mut s, both_lists, fp, &["providers"]).await;

    // The server is still fine.
    s.client.route(prompt("still alive?")).await.unwrap();
    s.shutdown().await;
}

#[tokio::test]
async fn models_never_observed_near_a_prompt_are_out_of_domain() {
    // The shipped head learned math-benchmark models only on math and chat models only on chat:
    // each family is left out of the other's prompts instead of being trusted blindly.
    let mut s = TestServer::start().await;
    let catalog = s.client.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner();
    let math = s.client.route(RouteRequest { explain: true, ..prompt(MATH_PROMPT) }).await.unwrap().into_inner();
    let chat = s.client.route(RouteRequest { explain: true, ..prompt(CHAT_PROMPT) }).await.unwrap().into_inner();
    let ood = |r: &pb::RouteResponse| -> Vec<String> {
        r.explanations
            .iter()
            .filter(|e| e.reason == ExclusionReason::OutOfDomain as i32)
            .map(|e| e.candidate.as_ref().unwrap().model.clone())
            .collect()
    };
    let (om, oc) = (ood(&math), ood(&chat));
    assert!(om.len() >= 5 && oc.len() >= 10, "math {} / chat {} out of domain", om.len(), oc.len());
    assert!(oc.contains(&"o1-mini-2024-09-12".to_string()), "o1-mini was only observed on math and code");
    // The math primary is a math-evaluated model, which the chat prompt leaves out, and the
    // chat primary is not one of those.
    assert!(oc.contains(&math.candidates[0].model), "math primary {} should be a math-evaluated model", math.candidates[0].model);
    assert!(!oc.contains(&chat.candidates[0].model));
    assert!(catalog.models.len() > om.len() + 4);

    // The domain rule is the router's own judgement, not the caller's: a request that allows only
    // models it would leave out is still routed, to the best of them, with the doubt explained.
    let only_ood = RouteRequest { explain: true, allowed_models: oc.clone(), max_fallbacks: Some(2), ..prompt(CHAT_PROMPT) };
    let r = s.client.route(only_ood).await.expect("the domain rule never refuses a request").into_inner();
    assert_eq!(r.candidates.len(), 3);
    for c in &r.candidates {
        assert!(oc.contains(&c.model), "{} is not in allowed_models", c.model);
        let e = r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == c.model).unwrap();
        assert_eq!(e.reason, ExclusionReason::Unspecified as i32, "{}: {}", c.model, e.detail);
        assert_eq!(e.kept_despite, ExclusionReason::OutOfDomain as i32, "{}: {}", c.model, e.detail);
        assert!(e.detail.contains("kept"), "{}", e.detail);
    }
    // Ranked by utility among the kept models, as usual.
    let utility =
        |m: &str| r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == m).unwrap().candidate.clone().unwrap().utility;
    assert!(utility(&r.candidates[0].model) >= utility(&r.candidates[1].model));
    // With an in-domain model allowed too, the out-of-domain ones are left out again.
    let mut mixed = oc.clone();
    mixed.push(chat.candidates[0].model.clone());
    let r = s.client.route(RouteRequest { allowed_models: mixed, ..prompt(CHAT_PROMPT) }).await.unwrap().into_inner();
    assert_eq!(r.candidates.iter().map(|c| c.model.as_str()).collect::<Vec<_>>(), [chat.candidates[0].model.as_str()]);
    // The caller's own constraints still refuse, naming themselves, not the domain rule.
    let status =
        s.client.route(RouteRequest { allowed_models: oc.clone(), max_cost_usd: Some(1e-12), ..prompt(CHAT_PROMPT) }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("max_cost_usd") && !status.message().contains("domain"), "{}", status.message());
    s.shutdown().await;
}

/// The shipped catalog's Llama 3.1 70B: served by together, deepinfra and hyperbolic.
const LLAMA_70B: &str = "Meta-Llama-3.1-70B-Instruct";

fn providers(c: &pb::Candidate) -> Vec<&str> {
    c.endpoints.iter().map(|e| e.provider.as_str()).collect()
}

#[tokio::test]
async fn endpoints_come_back_in_failover_order_and_provider_preferences_filter_them() {
    // The shipped catalog, except that together says it has no tools for Llama 3.1 70B.
    let mut cfg = common::shipped_config();
    let llama = cfg.models.iter_mut().find(|m| m.id == LLAMA_70B).expect("Llama 3.1 70B is in the shipped catalog");
    assert_eq!(llama.endpoints.len(), 3, "{llama:?}");
    llama.endpoints.iter_mut().find(|e| e.provider == "together").unwrap().capabilities.tools = Some(false);
    let mut s = TestServer::start_with(cfg).await;
    let only_llama = || RouteRequest { allowed_models: vec![LLAMA_70B.into()], explain: true, ..prompt(MATH_PROMPT) };

    // Default: cheap first (deepinfra $0.13/$0.40, hyperbolic $0.40/$0.40, together $0.88/$0.88);
    // deepinfra and hyperbolic cost within 10% of each other on a short prompt, a near tie whose
    // load is spread by request id while neither is measured; the candidate's provider and cost
    // are its first endpoint's.
    let r = s.client.route(only_llama()).await.unwrap().into_inner();
    let c = &r.candidates[0];
    let order = providers(c);
    let mut near_tie = order[..2].to_vec();
    near_tie.sort();
    assert_eq!((near_tie, order[2]), (vec!["deepinfra", "hyperbolic"], "together"));
    assert_eq!((c.provider.as_str(), c.predicted_cost_usd), (order[0], c.endpoints[0].predicted_cost_usd));
    let attempts: Vec<String> = r.attempts.iter().map(|a| format!("{}@{}", a.model, a.provider)).collect();
    assert_eq!(attempts, order.iter().map(|p| format!("{LLAMA_70B}@{p}")).collect::<Vec<_>>());
    // sort = price (OpenRouter's): strictly cheapest first, whatever the request id.
    let by_price = pb::ProviderPreferences { sort: "price".into(), ..Default::default() };
    let r = s.client.route(RouteRequest { provider: Some(by_price), ..only_llama() }).await.unwrap().into_inner();
    let c = &r.candidates[0];
    assert_eq!(providers(c), ["deepinfra", "hyperbolic", "together"]);
    assert!(c.endpoints.windows(2).all(|w| w[0].predicted_cost_usd <= w[1].predicted_cost_usd));

    // provider.ignore leaves deepinfra out, and the explanation says which endpoint failed what.
    let ignore = pb::ProviderPreferences { ignore: vec!["deepinfra".into()], ..Default::default() };
    let r = s.client.route(RouteRequest { provider: Some(ignore), ..only_llama() }).await.unwrap().into_inner();
    assert_eq!(providers(&r.candidates[0]), ["hyperbolic", "together"]);
    let e = r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == LLAMA_70B).unwrap();
    let deepinfra = e.endpoints.iter().find(|x| x.endpoint.as_ref().unwrap().provider == "deepinfra").unwrap();
    assert_eq!(deepinfra.reason, ExclusionReason::ProviderPreferences as i32);
    assert!(deepinfra.detail.contains("provider.ignore"), "{}", deepinfra.detail);
    assert_eq!(deepinfra.rank, 0);

    // sort = throughput with order: order first, then the rest.
    let order = pb::ProviderPreferences { order: vec!["together".into()], ..Default::default() };
    let r = s.client.route(RouteRequest { provider: Some(order), ..only_llama() }).await.unwrap().into_inner();
    let order = providers(&r.candidates[0]);
    let mut rest = order[1..].to_vec();
    rest.sort();
    assert_eq!((order[0], rest), ("together", vec!["deepinfra", "hyperbolic"]));

    // A tool-calling request never lands on together's endpoint, here or on any model.
    let tools = || pb::Requirements { tools: true, ..Default::default() };
    let r = s.client.route(RouteRequest { requirements: Some(tools()), ..only_llama() }).await.unwrap().into_inner();
    let mut with_tools = providers(&r.candidates[0]);
    with_tools.sort();
    assert_eq!(with_tools, ["deepinfra", "hyperbolic"]);
    let e = r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == LLAMA_70B).unwrap();
    let together = e.endpoints.iter().find(|x| x.endpoint.as_ref().unwrap().provider == "together").unwrap();
    assert_eq!(together.reason, ExclusionReason::Capability as i32);
    assert!(together.detail.contains("needs tools"), "{}", together.detail);
    // Only together allowed: refused, naming the capability rule.
    let only_together = pb::ProviderPreferences { only: vec!["together".into()], ..Default::default() };
    let err =
        s.client.route(RouteRequest { requirements: Some(tools()), provider: Some(only_together), ..only_llama() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("capabilities") && err.message().contains("tools"), "{}", err.message());
    // require_parameters: only endpoints that declare tools (deepinfra's, in the shipped catalog).
    let strict = pb::ProviderPreferences { require_parameters: true, ..Default::default() };
    let r = s
        .client
        .route(RouteRequest { requirements: Some(tools()), provider: Some(strict), ..prompt(MATH_PROMPT) })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.candidates.is_empty());
    assert!(r.attempts.iter().all(|a| a.provider == "deepinfra"), "{:?}", r.attempts);

    // Bad values name the field, the limit and the value.
    for (p, words) in [
        (pb::ProviderPreferences { sort: "fastest".into(), ..Default::default() }, ["provider.sort", "\"fastest\""]),
        (pb::ProviderPreferences { quantizations: vec!["fp7".into()], ..Default::default() }, ["provider.quantizations[0]", "\"fp7\""]),
        (
            pb::ProviderPreferences {
                preferred_max_latency: Some(pb::Percentiles { p90: Some(-1.0), ..Default::default() }),
                ..Default::default()
            },
            ["provider.preferred_max_latency.p90", "-1"],
        ),
    ] {
        let err = s.client.route(RouteRequest { provider: Some(p), ..prompt(MATH_PROMPT) }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(words.iter().all(|w| err.message().contains(w)), "{}", err.message());
    }
    s.shutdown().await;
}
