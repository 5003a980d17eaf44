//! `forward` (and `tunnels`): several forwards in one process, each its own session started in
//! parallel, plus SOCKS5 proxies. Every listener is bound before any session starts, so a taken
//! port fails fast and the status line shows the real port; the listener outlives its session
//! (see [`session::run_forwarding`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join_all, LocalBoxFuture};

use super::spec::{request, DynamicForward, LocalForward};
use super::{resolve_target, socks, tunnels, AwsOptions, Failure};
use crate::config;
use crate::exit::Exit;
use crate::session::port::params::Endpoint;
use crate::session::port::Listener;
use crate::session::{self, Settings};
use crate::ui::Ui;

/// Default idle time of a SOCKS5 destination's session, in seconds.
pub const DEFAULT_SOCKS_IDLE_SECS: u64 = 300;
/// The forwards of one target.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: String,
    pub local: Vec<LocalForward>,
    pub dynamic: Vec<DynamicForward>,
    pub socks_idle: Duration,
    pub reason: Option<String>,
}

/// Refuses two listeners on one local address and port, naming both (`what`: how the user
/// wrote each, `-L 5432` or a tunnel's name), before anything binds: otherwise the second one
/// fails as if another program held the port.
pub(crate) fn distinct_ports(ports: &[(String, Option<String>, u16)]) -> Result<(), Failure> {
    for (i, (what, bind, port)) in ports.iter().enumerate() {
        if *port == 0 {
            continue;
        }
        if let Some((other, _, _)) = ports[..i].iter().find(|(_, b, p)| {
            p == port && b.as_deref().unwrap_or("") == bind.as_deref().unwrap_or("")
        }) {
            let same = if other == what {
                format!("{what} is given twice")
            } else {
                format!("{other} and {what} both listen on it")
            };
            return Err(Failure::new(
                Exit::Usage,
                format!("local port {port}: {same}; give each forward its own local port (0 for any free one)"),
            ));
        }
    }
    Ok(())
}

/// Runs every plan until Ctrl-C (or every forward ended); the status is the worst one.
pub(crate) async fn run(
    env: &config::Env,
    aws: &AwsOptions,
    cfg: &tunnels::Config,
    plans: Vec<Plan>,
) -> Result<Exit, Failure> {
    if plans
        .iter()
        .all(|p| p.local.is_empty() && p.dynamic.is_empty())
    {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "nothing to forward: give -L {} and/or -D [BIND:]PORT",
                super::spec::LOCAL_FORMS
            ),
        ));
    }
    let ports: Vec<(String, Option<String>, u16)> = plans
        .iter()
        .flat_map(|p| {
            let l = p
                .local
                .iter()
                .map(|l| (format!("-L {}", l.local_port), l.bind.clone(), l.local_port));
            let d = p
                .dynamic
                .iter()
                .map(|d| (format!("-D {}", d.port), d.bind.clone(), d.port));
            l.chain(d).collect::<Vec<_>>()
        })
        .collect();
    distinct_ports(&ports)?;
    let api = super::api(aws).await?;
    // Status lines (ours and the sessions') go to stderr: stdout stays free.
    let ui = Ui::new(true, env);

    // 1. Targets and listeners, before any session exists.
    let mut locals = Vec::new();
    let mut proxies = Vec::new();
    for plan in &plans {
        let target = resolve_target(&plan.target, &cfg.aliases, &api).await?;
        for l in &plan.local {
            let listener = Listener::open(&Endpoint::Tcp(l.local_port), l.bind.as_deref())
                .await
                .map_err(|e| Failure::new(Exit::Io, e.to_string()))?;
            locals.push((target.clone(), l.clone(), listener, plan.reason.clone()));
        }
        for d in &plan.dynamic {
            let proxy = socks::Proxy::bind(d)
                .await
                .map_err(|e| Failure::new(Exit::Io, e))?;
            proxies.push((target.clone(), proxy, plan.socks_idle, plan.reason.clone()));
        }
    }

    // 2. The sessions of the -L forwards, started in parallel; one failing ends the others.
    let starts = locals.iter().map(|(target, l, _, reason)| {
        super::start(
            env,
            aws,
            &api,
            request(target, l.host.as_deref(), l.remote_port, reason.clone()),
            ui,
        )
    });
    let started = join_all(starts).await;
    if started.iter().any(Result::is_err) {
        let mut first = None;
        for s in started {
            match s {
                Ok(s) => {
                    if let Err(e) = s.aws.terminate_session(Duration::from_secs(2)).await {
                        tracing::warn!("{e}");
                    }
                }
                Err(f) => {
                    first.get_or_insert(f);
                }
            }
        }
        return Err(first.unwrap_or_else(|| Failure::new(Exit::Software, "no session started")));
    }

    let mut runs: Vec<LocalBoxFuture<'_, Exit>> = Vec::new();
    for (s, (target, l, listener, _)) in started.into_iter().flatten().zip(locals) {
        let listener = Arc::new(listener);
        let dest = match &l.host {
            Some(h) => format!("{h}:{}", l.remote_port),
            None => format!("port {}", l.remote_port),
        };
        ui.warn(&format!(
            "{} -> {dest} via {target} (session {})",
            listener.address(),
            s.args.response.session_id
        ));
        runs.push(Box::pin(run_one(s, listener, env.port_restarts)));
    }
    for (target, proxy, idle, reason) in proxies {
        ui.warn(&format!(
            "{} -> SOCKS5 via {target} (a session per destination, closed after {} s idle)",
            proxy.address(),
            idle.as_secs()
        ));
        let ctx = socks::Context {
            env: env.clone(),
            aws: aws.clone(),
            api: api.clone(),
            target,
            idle,
            reason,
            ui,
        };
        runs.push(Box::pin(proxy.run(ctx)));
    }
    let exits = join_all(runs).await;
    Ok(exits
        .into_iter()
        .find(|e| *e != Exit::Normal)
        .unwrap_or(Exit::Normal))
}

/// One `-L` forward: its session (and the sessions that continue it) on `listener`.
async fn run_one(settings: Settings, listener: Arc<Listener>, restarts: u32) -> Exit {
    *settings.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
    let ui = settings.ui;
    let (outcome, id) = session::run_forwarding(settings, restarts).await;
    session::print_end(ui, &id, &outcome);
    outcome.exit
}
