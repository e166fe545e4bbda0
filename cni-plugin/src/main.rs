//! `tabby`: the CNI plugin binary that the container runtime executes for
//! every pod (CNI spec 1.1.0).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::ExitCode;

use tabby_cni::cmd;
use tabby_cni::config::{self, LATEST_VERSION, Verb};
use tabby_cni::error::{CniError, Code};
use tracing::info_span;

fn init_logging() {
    // Logs go to stderr, which runtimes keep in their own log; stdout is
    // reserved for the result. TABBY_LOG picks the level (default info).
    let level = std::env::var("TABBY_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

fn main() -> ExitCode {
    tabby_cni::timing::start();
    init_logging();
    tabby_cni::timing::mark("logging");
    // `std::env::vars` panics on a variable that is not UTF-8; the runtime
    // must get an error object instead.
    let vars = config::collect_env(std::env::vars_os());
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);

    let mut out = std::io::stdout().lock();
    let version = config::sniff_version(&stdin).unwrap_or_else(|| LATEST_VERSION.to_string());
    tabby_cni::timing::mark("stdin");
    let result = match (read, vars) {
        (_, Err(e)) => Err(e),
        (Ok(_), Ok(vars)) => run(&vars, &stdin),
        (Err(e), _) => Err(CniError::new(Code::Io, "cannot read stdin", e.to_string())),
    };
    tabby_cni::timing::mark("verb done");
    match result {
        Ok(Some(json)) => {
            let _ = writeln!(out, "{json}");
            tabby_cni::timing::mark("result written");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(code = e.code as u32, "{e}");
            let _ = writeln!(out, "{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn run(
    vars: &BTreeMap<String, String>,
    stdin: &[u8],
) -> Result<Option<serde_json::Value>, CniError> {
    let verb = config::parse_verb(vars)?;
    if verb == Verb::Version {
        return Ok(Some(cmd::version(stdin)));
    }
    let env = config::parse_env(verb, vars)?;
    let conf = config::parse_conf(stdin)?;
    tabby_cni::timing::mark("parsed");
    let min = match verb {
        Verb::Check => Some("0.4.0"),
        Verb::Status | Verb::Gc => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = min
        && !config::version_at_least(&conf.cni_version, min)
    {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "config version {} does not allow {}",
                conf.cni_version,
                verb.as_str()
            ),
            format!("{} needs cniVersion {min} or later", verb.as_str()),
        ));
    }
    let _span = info_span!(
        "cni",
        cmd = verb.as_str(),
        container_id = %env.container_id,
        ifname = %env.ifname,
        pod = %env.pod().map(|(ns, n)| format!("{ns}/{n}")).unwrap_or_default(),
    )
    .entered();
    match verb {
        Verb::Add => cmd::add(&env, &conf).map(Some),
        Verb::Del => cmd::del(&env, &conf).map(|()| None),
        Verb::Check => cmd::check(&env, &conf).map(|()| None),
        Verb::Status => cmd::status(&env, &conf).map(|()| None),
        Verb::Gc => cmd::gc(&env, &conf).map(|()| None),
        Verb::Version => Ok(Some(cmd::version(stdin))),
    }
}
