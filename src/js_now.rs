//! The `now` option, only ever called on the JavaScript thread (docs/api.md#options); the core
//! reads its last sample from a `ManualClock` it shares with this object.

use napi::bindgen_prelude::*;

use super::js::{describe, type_error};
use quota_core::clock::ManualClock;

/// The host's `now` and the core clock that holds its last reading.
pub struct JsNow {
    function: FunctionRef<(), Unknown<'static>>,
    /// The clock the core reads (clones share the time).
    pub clock: ManualClock,
}

impl JsNow {
    pub fn new(env: &Env, function: Function<(), Unknown<'static>>) -> Result<Self> {
        let start = read(env, &function)?;
        Ok(Self { function: function.create_ref()?, clock: ManualClock::new(start) })
    }

    /// Reads the host's clock now, on the JavaScript thread, into the core clock.
    pub fn sample(&self, env: &Env) -> Result<()> {
        let function = self.function.borrow_back(env)?;
        self.clock.set(read(env, &function)?);
        Ok(())
    }
}

/// One reading; a clock that answers anything but a finite number is a programming error.
fn read(env: &Env, function: &Function<(), Unknown>) -> Result<i64> {
    let value = function.call(())?;
    let value_type = value.get_type()?;
    if value_type == ValueType::Number {
        let ms = unsafe { value.cast::<f64>() }?;
        if ms.is_finite() {
            return Ok(ms as i64);
        }
    }
    Err(type_error(
        env,
        format!(
            "options.now must return a finite number of milliseconds, got {}",
            describe(value_type)
        ),
    ))
}
