use std::process::ExitCode;

use distilserve::cli::{Cli, Command, SettingsArgs, SpecFormat};
use distilserve::commands;
use distilserve::http::ApiDoc;
use distilserve::server::shutdown_signal;
use distilserve::startup::Application;
use utoipa::OpenApi;

/// mimalloc for our allocations; its `override` feature also routes malloc,
/// and so ONNX Runtime's, through it.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The models' loading frees more than it keeps (each graph file parsed,
/// ONNX Runtime's optimised copies, the shared weights read): mimalloc would
/// hand that memory back to the system only at its next allocations after a
/// delay, and a replica that then sits idle would report it for minutes
/// (all-MiniLM-L6-v2 with both graphs: 280-340 MiB at ready instead of 215).
/// So it purges at once while the models load, and keeps its default delay
/// (fewer page faults between requests) while serving.
#[cfg(feature = "mimalloc")]
mod allocator {
    use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

    /// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v2 and v3),
    /// which libmimalloc-sys does not name.
    const PURGE_DELAY: mi_option_t = 15;

    pub async fn purging_at_once<T>(work: impl std::future::Future<Output = T>) -> T {
        // SAFETY (all three): calls into mimalloc's option table with a valid
        // option, which read or write one integer.
        struct Restore(std::ffi::c_long);
        impl Drop for Restore {
            fn drop(&mut self) {
                unsafe { mi_option_set(PURGE_DELAY, self.0) };
            }
        }
        let _restore = Restore(unsafe { mi_option_get(PURGE_DELAY) });
        unsafe { mi_option_set(PURGE_DELAY, 0) };
        work.await
    }
}

#[cfg(not(feature = "mimalloc"))]
mod allocator {
    pub async fn purging_at_once<T>(work: impl std::future::Future<Output = T>) -> T {
        work.await
    }
}

fn main() -> ExitCode {
    let cli = Cli::from_args();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Extract(args) => batch_job(&args.settings, || commands::extract(&args)),
        Command::Train(args) => batch_job(&args.settings, || commands::train_command(&args)),
        Command::Evaluate(args) => batch_job(&args.settings, || commands::evaluate(&args)),
        Command::Openapi { format } => print_openapi(format),
        Command::Healthcheck(args) => commands::healthcheck(&args),
        Command::Config(args) => args.settings().map_err(anyhow::Error::from).and_then(|mut s| {
            for key in [&mut s.security.api_key, &mut s.security.admin_key] {
                if !key.is_empty() {
                    *key = "<set>".into();
                }
            }
            Ok(println!("{}", serde_json::to_string_pretty(&s)?))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Batch jobs log in text unless told otherwise: a person is usually watching.
fn batch_job(args: &SettingsArgs, job: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut logging = args.settings()?.logging;
    if args.log_format.is_none() {
        logging.format = distilserve::config::LogFormat::Text;
    }
    let _telemetry = distilserve::telemetry::init(&logging);
    job()
}

fn serve(args: &SettingsArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let telemetry = distilserve::telemetry::init(&settings.logging);
    let runtime = distilserve::server::runtime(&settings)?;
    let result = runtime.block_on(async {
        let app = allocator::purging_at_once(Application::build(settings)).await?;
        app.run_until(shutdown_signal()).await
    });
    // A head still training at startup runs on a blocking thread: do not wait
    // for it once the server has drained.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    drop(telemetry); // sends the spans still buffered
    result
}

fn print_openapi(format: SpecFormat) -> anyhow::Result<()> {
    let spec = ApiDoc::openapi();
    let text = match format {
        SpecFormat::Yaml => spec.to_yaml()?,
        SpecFormat::Json => spec.to_pretty_json()?,
    };
    print!("{text}");
    Ok(())
}
