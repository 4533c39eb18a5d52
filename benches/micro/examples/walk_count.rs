//! The JSON walker's work per request, alone: the benchmark's answer (as `switchyard mock`
//! sends it) and request (as `switchyard loadtest` sends it) read N times, as the gateway
//! reads them. Run under callgrind twice (1,000 and 11,000 times) and divide the
//! difference by 10,000 for instructions per request (`benches/README.md`, section 2).
use switchyard_proxy::answer::{JsonAnswer, RequestScan};

const ANSWER: &[u8] = br#"{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"Hello from mock","role":"assistant"}}],"created":1700000000,"id":"chatcmpl-mock-0","model":"deepseek-chat","object":"chat.completion","usage":{"completion_tokens":3,"prompt_tokens":17,"total_tokens":20}}"#;
const REQUEST: &[u8] =
    br#"{"messages":[{"content":"Say hello.","role":"user"}],"model":"deepseek-chat","stream":false}"#;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    // Summed and printed so the reads cannot be optimised away.
    let mut seen = 0u64;
    for _ in 0..n {
        let mut answer = JsonAnswer::default();
        answer.feed(std::hint::black_box(ANSWER));
        let facts = answer.facts();
        seen += answer.usage().map_or(0, |u| u.0) + u64::from(facts.choices);
        let mut request = RequestScan::default();
        request.feed(std::hint::black_box(REQUEST));
        seen +=
            u64::from(request.finish()) + request.read.model.as_ref().map_or(0, |m| m.len() as u64);
    }
    println!("{seen}");
}
