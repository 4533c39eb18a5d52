//! `switchyard mock`: the OpenAI-shaped mock provider, for demos and trying a config
//! without keys.

use std::process::ExitCode;

use clap::Args;

use crate::parse_duration;

#[derive(Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Name shown in its answers.
    #[arg(long, default_value = "mock")]
    pub name: String,
    /// Delay before every response head, e.g. 150ms.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub latency: std::time::Duration,
    /// Share of requests (0..1) answered with 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// SSE content chunks per streamed answer.
    #[arg(long, default_value_t = 5)]
    pub chunks: usize,
    /// Pause before each SSE chunk, e.g. 20ms.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub chunk_delay: std::time::Duration,
    /// Answer every request with this status (e.g. 401, 429, 503), as a provider that
    /// refuses everything.
    #[arg(long, value_parser = clap::value_parser!(u16).range(200..600))]
    pub status: Option<u16>,
    /// Serve only requests with `Authorization: Bearer <KEY>`; others get 401.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Comma-separated models it serves; others get 404 model_not_found.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Speak HTTP/1.1 only (by default it also serves h2c, HTTP/2 with prior knowledge).
    #[arg(long)]
    pub http1_only: bool,
    /// HTTP/2 streams allowed at once per connection (default 200).
    #[arg(long, value_name = "N")]
    pub http2_max_streams: Option<u32>,
    /// Break every chat completion while answering 200, as failing relays do: error_in_200,
    /// no_choices, empty_message, error_event, stop_early, truncate. A slow head is
    /// --latency.
    #[arg(long, value_name = "NAME")]
    pub fault: Option<switchyard_mock::Fault>,
    /// Leave these request parameters unanswered, as relays that drop them do (comma
    /// list): tools, response_format, stream_options, logprobs, n.
    #[arg(long, value_name = "LIST", default_value = "")]
    pub ignore: switchyard_mock::Ignore,
    /// Answer 400 to chat requests that carry `stream_options`, as providers that do not
    /// know the parameter do.
    #[arg(long)]
    pub reject_stream_options: bool,
}

pub fn run(args: MockArgs) -> ExitCode {
    let MockArgs {
        listen,
        name,
        latency,
        error_rate,
        chunks,
        chunk_delay,
        status,
        api_key,
        models,
        http1_only,
        http2_max_streams,
        fault,
        ignore,
        reject_stream_options,
    } = args;

    if !(0.0..=1.0).contains(&error_rate) {
        eprintln!("switchyard: --error-rate {error_rate} is not between 0 and 1");
        return ExitCode::from(2);
    }
    let cfg = switchyard_mock::MockConfig {
        name,
        addr: listen,
        latency,
        error_rate,
        chunks,
        chunk_delay,
        tls: None,
        status,
        api_key,
        models,
        http1_only,
        http2_max_streams,
        fault,
        ignore,
        reject_stream_options,
        // Nothing reads them here; a mock left running would grow without end.
        keep_received: Some(1000),
    };
    let rt = match crate::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        match switchyard_mock::Mock::start(cfg).await {
            Ok(m) => {
                println!(
                    "mock provider listening on {} (base_url {})",
                    m.addr(),
                    m.base_url()
                );
                let _ = tokio::signal::ctrl_c().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard: mock {listen}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
