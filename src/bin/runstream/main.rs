//! The `runstream` command: `run` (one command in the foreground), `serve` (the HTTP
//! server) and `gpu`.

mod args;
mod gpu_command;
mod metrics_table;
mod reload_requests;
mod run_command;
mod serve_args;
mod serve_command;
mod stop_requests;
mod token;
mod values;

use args::Command;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let code = match args::parse().command {
        Command::Run(run) => run_command::run(run),
        Command::Serve(options) => serve_command::run(options),
        Command::Gpu => gpu_command::run(),
    };
    std::process::exit(code);
}
