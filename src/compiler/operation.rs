//! The plan-level keys about operating runs: `run_key` (checked now, rendered when an apply picks its run),
//! `concurrency`, `notify`, and `budget`.

use indexmap::IndexMap;
use serde_json::Value as Json;

use crate::plan::{Notify, Operation};
use crate::plan_file::{NotifyOn, PlanFile, RawNotify};

impl super::Compiler {
    pub(super) fn operation(
        &mut self,
        raw: &PlanFile<serde::de::IgnoredAny>,
        vars: &IndexMap<String, Json>,
        ctx: &minijinja::Value,
    ) -> Option<Operation> {
        let before = self.problems.len();
        if let Some(key) = &raw.run_key {
            self.check_run_key(key, vars);
        }
        let notify = raw.notify.as_ref().and_then(|n| self.notify(n, ctx));
        if let Some(budget) = raw.budget.filter(|b| !(b.is_finite() && *b > 0.0)) {
            self.error_help(
                self.at("budget"),
                format!("`budget` must be a positive number of US dollars, not {budget}"),
                "write e.g. `budget: 25` (USD), or remove `budget` for no limit",
            );
        }
        (self.problems.len() == before).then(|| Operation {
            run_key: raw.run_key.clone(),
            concurrency: raw.concurrency.unwrap_or_default(),
            notify,
            budget: raw.budget,
        })
    }

    /// `run_key` may use `vars` and `env.NAME`; `env` is read when an apply picks its run, not now, so that
    /// `plan validate` passes on a laptop without the CI's variables.
    fn check_run_key(&mut self, key: &str, vars: &IndexMap<String, Json>) {
        if key.trim().is_empty() {
            self.error_help(
                self.at("run_key"),
                "`run_key` is empty",
                "name the run by what makes it unique, e.g. `run_key: \"{{ env.GITHUB_SHA }}\"`",
            );
            return;
        }
        let Some(refs) = self.references("run_key", key) else {
            return;
        };
        for r in refs {
            let problem = match (r.root(), r.member()) {
                ("vars", Some(name)) if !vars.contains_key(name) => {
                    Some(format!("`run_key` uses `{}`, which is not declared", r.0))
                }
                ("vars" | "env", Some(_)) => None,
                _ => Some(format!("`run_key` cannot use `{}`", r.0)),
            };
            if let Some(message) = problem {
                self.error_help(
                    self.at("run_key"),
                    message,
                    "`run_key` may use `vars.NAME` and `env.NAME` (the environment of `plan apply`)",
                );
            }
        }
    }

    fn notify(&mut self, raw: &RawNotify, ctx: &minijinja::Value) -> Option<Notify> {
        let webhook = match &raw.webhook {
            Some(w) => Some(self.render_compile_time("notify.webhook", w, ctx)?),
            None => None,
        };
        let sns = match &raw.sns {
            Some(t) => Some(self.render_compile_time("notify.sns", t, ctx)?),
            None => None,
        };
        if webhook.is_none() && sns.is_none() {
            self.error_help(
                self.at("notify"),
                "`notify` has nowhere to send to",
                "add `webhook: URL` (a Slack incoming webhook, for example) or `sns: TOPIC_ARN`",
            );
            return None;
        }
        if webhook.as_deref().is_some_and(|url| !webhook_url_ok(url)) {
            self.error_help(
                self.at("notify.webhook"),
                "`notify.webhook` must be an https:// URL",
                "webhook URLs carry their secret in the path: plain http is accepted only for localhost",
            );
            return None;
        }
        if let Some(arn) = sns
            .as_deref()
            .filter(|a| crate::notify::topic_region(a).is_none())
        {
            self.error_help(
                self.at("notify.sns"),
                format!("`notify.sns` is not an SNS topic ARN: `{arn}`"),
                "write `arn:aws:sns:REGION:ACCOUNT:TOPIC`, e.g. `arn:aws:sns:us-east-1:123456789012:training`",
            );
            return None;
        }
        let on = raw
            .on
            .clone()
            .unwrap_or_else(|| vec![NotifyOn::Failure, NotifyOn::Stall]);
        if on.is_empty() {
            self.error_help(
                self.at("notify.on"),
                "`notify.on` is empty: nothing would ever be sent",
                "list some of `failure`, `stall`, `success`, or remove `on` for `[failure, stall]`",
            );
            return None;
        }
        Some(Notify { webhook, sns, on })
    }
}

/// https anywhere; http only to this machine (tests, a local relay).
fn webhook_url_ok(url: &str) -> bool {
    if url.starts_with("https://") && url.len() > "https://".len() {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::webhook_url_ok;

    #[test]
    fn test_int_webhook_urls_are_https_or_local() {
        assert!(webhook_url_ok("https://hooks.slack.com/services/T0/B0/x"));
        assert!(webhook_url_ok("http://127.0.0.1:8080/hook"));
        assert!(webhook_url_ok("http://localhost/hook"));
        assert!(!webhook_url_ok("http://hooks.slack.com/services/T0/B0/x"));
        assert!(!webhook_url_ok("http://127.0.0.1.evil.example/x"));
        assert!(!webhook_url_ok("ftp://x"));
        assert!(!webhook_url_ok("https://"));
    }

    #[test]
    fn test_int_budget_is_a_positive_number() {
        let check = |budget: &str| {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("p.yaml");
            let plan =
                format!("plan: p\nbudget: {budget}\nsteps:\n  h: {{ kind: instance }}\n  a: {{ kind: run, on: h, run: 'true' }}\n");
            std::fs::write(&file, plan).expect("write");
            crate::compiler::compile(&file, &crate::variables::Overrides::default())
                .map(|c| c.plan.operation.budget)
                .map_err(|e| e.render())
        };
        assert_eq!(check("25"), Ok(Some(25.0)));
        assert_eq!(check("0.5"), Ok(Some(0.5)));
        for bad in ["0", "-3", ".nan"] {
            let err = check(bad).expect_err(bad);
            assert!(
                err.contains("`budget` must be a positive number of US dollars"),
                "{bad}: {err}"
            );
        }
    }
}
