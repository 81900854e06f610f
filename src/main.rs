use std::process::ExitCode;

use clap::Parser;
use distilserve::cli::{Cli, Command};
use distilserve::http::ApiDoc;
use distilserve::startup::{shutdown_signal, Application};
use utoipa::OpenApi;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Openapi => ApiDoc::openapi()
            .to_pretty_json()
            .map(|json| println!("{json}"))
            .map_err(anyhow::Error::from),
        Command::Config(args) => args
            .settings()
            .map_err(anyhow::Error::from)
            .and_then(|s| Ok(println!("{}", serde_json::to_string_pretty(&s)?))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &distilserve::cli::SettingsArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    distilserve::telemetry::init(&settings.logging);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let app = Application::build(settings).await?;
            app.run_until(shutdown_signal()).await
        })
}
