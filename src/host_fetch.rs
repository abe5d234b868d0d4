//! The host transports (docs/endpoint.md#host-transports): a JavaScript adapter, built once per
//! manager, calls the host's function and hands back its answer and settling `now` as JSON.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use napi::bindgen_prelude::*;
use serde::Deserialize;
use serde_json::Value;

use super::callbacks::{host_function, HostFunction};
use super::js_now::JsNow;
use super::options::Fields;
use quota_core::clock::ManualClock;
use quota_core::transport::{HostAnswer, HostTransport, PollKind, PollRequest, Transport};

/// Builds the adapter around the host's functions (`fetchQuotaSnapshot` wins over `fetchImpl`,
/// as upstream). It never rejects: every failure becomes an answer.
const ADAPTER: &str = r"(function ([fetchImpl, fetchQuotaSnapshot, now]) {
  const finite = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : undefined)
  const fields = (v) => (v && typeof v === 'object' ? v : {})
  const message = (e) => String('message' in fields(e) ? e.message : e)
  const networkCodes = ['ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'ECONNREFUSED']
  const networkFailure = (e) => e instanceof TypeError ||
    networkCodes.includes(typeof fields(e).code === 'string' ? e.code : fields(fields(e).cause).code)
  const settle = (answer) => {
    try { answer.now = now ? finite(now()) : undefined } catch (e) { answer.now = undefined }
    try { return JSON.stringify(answer) } catch (e) {
      return JSON.stringify({ kind: 'failed', message: 'answer has no JSON form: ' + message(e) })
    }
  }
  if (fetchQuotaSnapshot) {
    return async (request) => {
      try {
        const snapshot = await fetchQuotaSnapshot({
          // No identity arrives as JSON null; the host's transport gets `undefined`, as from the plugin's manager.
          kind: request.kind, accountId: request.accountId ?? undefined, accessToken: request.accessToken,
        })
        return settle({ kind: 'snapshot', snapshot })
      } catch (error) {
        const e = fields(error)
        // The facade's mark: the host called the manager back for the route it was polling.
        if (e.code === 'QUOTA_REENTRANT_CALL') return settle({ kind: 'reentered', message: message(error) })
        return settle({
          kind: 'rejected', status: finite(e.status), retryAfter: finite(e.retryAfter),
          retryAfterMs: finite(e.retryAfterMs), message: message(error),
          network: networkFailure(error),
        })
      }
    }
  }
  return async (request) => {
    try {
      const response = await fetchImpl(request.url, { method: 'GET', headers: request.headers })
      if (!response || typeof response !== 'object') {
        return settle({ kind: 'failed', message: 'fetchImpl did not resolve with a response' })
      }
      const retryAfter = typeof response.headers?.get === 'function' ? response.headers.get('retry-after') : null
      const body = await response.text()
      return settle({
        kind: 'response', status: Number(response.status),
        retryAfter: retryAfter == null ? undefined : String(retryAfter), body: String(body),
      })
    } catch (error) {
      return settle({ kind: 'failed', message: message(error) })
    }
  }
})";

/// The host's transport, as the core sees it.
pub struct HostFetch {
    adapter: Arc<HostFunction<Value, Promise<String>>>,
    without_token: bool,
    clock: Option<ManualClock>,
}

impl HostFetch {
    /// The core's handle on the transport in `options`; `None` when the host gave neither.
    pub fn from_options(
        env: &Env,
        options: &Fields,
        js_now: Option<&JsNow>,
    ) -> Result<Option<Transport>> {
        let fetch_impl: Option<Function> = options.function("fetchImpl")?;
        let fetch_quota_snapshot: Option<Function> = options.function("fetchQuotaSnapshot")?;
        if fetch_impl.is_none() && fetch_quota_snapshot.is_none() {
            return Ok(None);
        }
        let without_token = fetch_quota_snapshot.is_some();
        let factory: Function<Vec<Option<Function>>, Function<Value, Promise<String>>> =
            env.run_script(ADAPTER)?;
        let adapter =
            factory.call(vec![fetch_impl, fetch_quota_snapshot, options.function("now")?])?;
        let adapter = Arc::new(host_function(&adapter)?);
        let clock = js_now.map(|now| now.clock.clone());
        Ok(Some(Transport(Arc::new(Self { adapter, without_token, clock }))))
    }
}

/// The adapter's answer: what the host's function gave, and the host's `now` when it settled.
#[derive(Deserialize)]
struct Answer {
    now: Option<f64>,
    #[serde(flatten)]
    kind: AnswerKind,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
enum AnswerKind {
    Response {
        status: f64,
        retry_after: Option<String>,
        body: String,
    },
    Snapshot {
        snapshot: Option<Value>,
    },
    Rejected {
        status: Option<f64>,
        retry_after: Option<f64>,
        retry_after_ms: Option<f64>,
        message: String,
        /// The rejection is a connection failure (a socket code, or fetch's `TypeError`).
        #[serde(default)]
        network: bool,
    },
    Failed {
        message: String,
    },
    Reentered {
        message: String,
    },
}

impl From<AnswerKind> for HostAnswer {
    fn from(kind: AnswerKind) -> Self {
        let status_of =
            |n: f64| (n.fract() == 0.0 && (100.0..=599.0).contains(&n)).then_some(n as u16);
        match kind {
            AnswerKind::Response { status, retry_after, body } => match status_of(status) {
                Some(status) => Self::Response { status, retry_after, body },
                None => Self::Failed(format!("fetchImpl answered status {status}")),
            },
            AnswerKind::Snapshot { snapshot } => Self::Snapshot(snapshot.unwrap_or(Value::Null)),
            AnswerKind::Rejected { status, retry_after, retry_after_ms, message, network } => {
                Self::Rejected {
                    status: status.and_then(status_of),
                    network,
                    retry_after_ms: retry_after_ms
                        .or_else(|| retry_after.map(|s| s * 1000.0))
                        .filter(|ms| *ms >= 0.0)
                        .map(|ms| ms as i64),
                    message,
                }
            }
            AnswerKind::Failed { message } => Self::Failed(message),
            AnswerKind::Reentered { message } => Self::Reentered(message),
        }
    }
}

impl HostTransport for HostFetch {
    fn poll(&self, request: PollRequest) -> BoxFuture<'static, HostAnswer> {
        let argument = serde_json::json!({
            "kind": match request.kind { PollKind::Main => "main", PollKind::Fallback => "fallback" },
            "accountId": request.account_id,
            "accessToken": request.access_token,
            "url": request.url,
            "headers": request.headers.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        });
        let adapter = self.adapter.clone();
        let clock = self.clock.clone();
        async move {
            let text: Result<String> = async { adapter.call_async(argument).await?.await }.await;
            let unreadable = |error| format!("host transport answer unreadable: {error}");
            let answer = match text.map(|text| serde_json::from_str::<Answer>(&text)) {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => return HostAnswer::Failed(unreadable(error)),
                Err(error) => {
                    return HostAnswer::Failed(format!("host transport failed: {}", error.reason))
                }
            };
            if let (Some(clock), Some(now)) = (&clock, answer.now) {
                clock.set(now as i64);
            }
            answer.kind.into()
        }
        .boxed()
    }

    fn fetches_without_token(&self) -> bool {
        self.without_token
    }
}
