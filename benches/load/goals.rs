//! The goals of issue 10, each a ratio from this run, met or not.

use crate::{Bench, args::Db};

fn rps(bench: &Bench, scenario: &str) -> Option<f64> {
    bench.report.row(scenario).and_then(|r| r.rps)
}

pub fn evaluate(bench: &mut Bench) {
    let mut goals: Vec<(String, String, bool)> = Vec::new();
    let mut goal = |g: &str, figure: String, met: bool| goals.push((g.to_owned(), figure, met));

    if let Some(raw) = bench.raw {
        for scenario in ["authenticate", "reset-password"] {
            if let Some(rps) = rps(bench, scenario) {
                let ratio = rps / raw.hashes_per_second;
                goal(
                    &format!("{scenario} ≥ 90% of raw argon2id"),
                    format!(
                        "{:.0}% ({rps:.0} vs {:.0}/s)",
                        100.0 * ratio,
                        raw.hashes_per_second
                    ),
                    ratio >= 0.9,
                );
            }
        }
    }

    let p = bench.params;
    let bound = bench.server.idle_rss_mib
        + p.hash_permits as f64 * p.argon2_memory_kib as f64 / 1024.0
        + 64.0;
    if let Some(peak) = bench
        .report
        .rows
        .iter()
        .filter(|r| r.usage.hwm_mib > 0.0)
        .max_by(|a, b| a.usage.hwm_mib.total_cmp(&b.usage.hwm_mib))
    {
        goal(
            "server VmHWM ≤ idle RSS + permits × argon2 memory + 64 MiB, every scenario",
            format!(
                "peak {:.0} MiB ({}) vs bound {bound:.0} MiB",
                peak.usage.hwm_mib, peak.scenario
            ),
            peak.usage.hwm_mib <= bound,
        );
    }

    let share = if bench.args.db == Db::Sqlite {
        0.3
    } else {
        0.2
    };
    if let Some(health) = bench.health_rps {
        for (scenario, target) in [
            ("request-reset", share),
            ("sign-up", share),
            ("verify-token", 0.5),
        ] {
            if let Some(rps) = rps(bench, scenario) {
                goal(
                    &format!("{scenario} ≥ {:.0}% of health rps", 100.0 * target),
                    format!("{:.1}% ({rps:.0} vs {health:.0} rps)", 100.0 * rps / health),
                    rps / health >= target,
                );
            }
        }
    }

    if let Some((ratio, beside)) = bench.mail_ratio {
        goal(
            "mail outbox → sink ≥ 80% of a plain lettre loop (a process of its own, as the server)",
            format!(
                "{:.0}% ({:.0}% of the loop beside the sink)",
                100.0 * ratio,
                100.0 * beside
            ),
            ratio >= 0.8,
        );
    }
    if let Some((fill, delivered, drain)) = bench.paced_mail {
        goal(
            "outbox drains at least as fast as SignUp fills it at 1,000/s",
            format!("fill {fill:.0}/s, delivered {delivered:.0}/s meanwhile; {drain}"),
            fill >= 950.0 && delivered >= 0.95 * fill,
        );
    }

    if let Some(ratio) = bench.probe_ratio {
        goal(
            "probe-under-load: health p99 ≤ 3× idle",
            format!("{ratio:.1}×"),
            ratio <= 3.0,
        );
    }

    if let (Some(o), Some(raw)) = (bench.overload, bench.raw) {
        goal(
            "overload: goodput ≥ 90% of peak authenticate",
            format!("{:.0}%", 100.0 * o.goodput),
            o.goodput >= 0.9,
        );
        let share = o.rejection_p99_ms / raw.one_hash_ms;
        goal(
            "overload: RESOURCE_EXHAUSTED p99 ≤ 10% of one hash",
            format!(
                "{:.1} ms = {:.0}% of {:.1} ms ({} rejections)",
                o.rejection_p99_ms,
                100.0 * share,
                raw.one_hash_ms,
                o.rejections
            ),
            o.rejections > 0 && share <= 0.1,
        );
        goal(
            "overload: no request waits unboundedly (≤ the 10 s request timeout)",
            format!("longest successful call {:.0} ms", o.max_wait_ms),
            o.max_wait_ms <= 10_000.0,
        );
    }

    let startup_ms = bench.server.startup.as_secs_f64() * 1000.0;
    if bench.args.db == Db::Sqlite {
        goal(
            "start-up to SERVING ≤ 100 ms (SQLite)",
            format!("{startup_ms:.0} ms"),
            startup_ms <= 100.0,
        );
    }
    goal(
        "idle RSS ≤ 20 MiB",
        format!("{:.1} MiB", bench.server.idle_rss_mib),
        bench.server.idle_rss_mib <= 20.0,
    );

    for (g, figure, met) in goals {
        bench.report.goal(g, figure, met);
    }
}
