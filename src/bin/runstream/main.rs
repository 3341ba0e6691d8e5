//! The `runstream` command: `run` (one command in the foreground) and `serve` (the HTTP
//! server).

mod args;
mod gpu_command;
mod run_command;
mod serve_command;
mod stop_requests;
mod token;

use args::Command;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let code = match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(run)) => run_command::run(run),
        Ok(Command::Serve(options)) => serve_command::run(options),
        Ok(Command::Gpu) => gpu_command::run(),
        Ok(Command::Help) => {
            print!("{}", args::USAGE);
            0
        }
        Ok(Command::Version) => {
            println!("runstream {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Err(e) => {
            eprintln!("runstream: {e}\n\n{}", args::USAGE);
            2
        }
    };
    std::process::exit(code);
}
