//! The `runstream` command: `run` (one command in the foreground), `serve` (the HTTP
//! server), `gpu`, and the client verbs for a running server (`ps`, `start`, `logs`,
//! `cancel`, `modules`).

mod args;
mod client;
mod gpu_command;
mod metrics_table;
mod printer;
mod reload_requests;
mod run_command;
mod serve_args;
mod serve_command;
mod stop_requests;
mod terminal_view;
mod token;
mod values;

use args::Command;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let code = match args::parse().command {
        Command::Run(run) => run_command::run(run),
        Command::Serve(options) => serve_command::run(options),
        Command::Gpu => gpu_command::run(),
        Command::Ps(args) => client::exit_status(client::ps::run(args)),
        Command::Start(args) => client::exit_status(client::start::run(args)),
        Command::Logs(args) => client::exit_status(client::logs::run(args)),
        Command::Cancel(args) => client::exit_status(client::cancel::run(args)),
        Command::Modules(args) => client::exit_status(client::modules::run(args)),
    };
    std::process::exit(code);
}
