//! Deep-frozen JavaScript views of cache entries, the same object until the entry changes
//! (docs/api.md#methods): the core replaces an entry's `Arc` whenever it changes, so pointer
//! equality says "unchanged".

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use serde::Serialize;
use serde_json::Value;

use quota_core::snapshot::QuotaEntry;

struct View {
    entry: Arc<QuotaEntry>,
    object: ObjectRef<false>,
}

/// One view per route: `None` is main, `Some(id)` a fallback.
#[derive(Default)]
pub struct EntryViews {
    views: RefCell<HashMap<Option<String>, View>>,
}

impl EntryViews {
    /// The view of `route`'s entry; `None` (`null`) when there is none.
    pub fn get<'env>(
        &self,
        env: &'env Env,
        route: Option<&str>,
        entry: Option<Arc<QuotaEntry>>,
    ) -> Result<Option<Unknown<'env>>> {
        if let Some(entry) = entry {
            return self.view(env, route, entry).map(Some);
        }
        // A fallback without an entry lets its view go. Main keeps its view: `getMain` answers
        // null for another identity while the entry stays, and the entry must keep its object
        // for every identity it is shown to (the facade keeps one per identity).
        if let Some(stale) = route.and_then(|id| self.views.borrow_mut().remove(&Some(id.into()))) {
            stale.object.unref(env)?;
        }
        Ok(None)
    }

    /// The view of `entry` for `route`: the same object while the entry is unchanged.
    pub fn view<'env>(
        &self,
        env: &'env Env,
        route: Option<&str>,
        entry: Arc<QuotaEntry>,
    ) -> Result<Unknown<'env>> {
        let mut views = self.views.borrow_mut();
        let key = route.map(str::to_owned);
        if let Some(view) = views.get(&key).filter(|v| Arc::ptr_eq(&v.entry, &entry)) {
            return Ok(view.object.get_value(env)?.to_unknown());
        }
        let object = frozen_object(env, entry.as_ref())?;
        let fresh = View { entry, object: object.create_ref()? };
        if let Some(stale) = views.insert(key, fresh) {
            stale.object.unref(env)?;
        }
        Ok(object.to_unknown())
    }

    /// Lets go of every view (the manager is being collected).
    pub fn release(&self, env: &Env) {
        for (_, view) in self.views.borrow_mut().drain() {
            let _ = view.object.unref(env);
        }
    }
}

/// A value handed to JavaScript deep-frozen, for results several callers share.
pub struct Frozen<T>(pub T);

impl<T: Serialize> ToNapiValue for Frozen<T> {
    unsafe fn to_napi_value(env: sys::napi_env, value: Self) -> Result<sys::napi_value> {
        let env = Env::from_raw(env);
        Ok(frozen_object(&env, &value.0)?.raw())
    }
}

fn frozen_object<'env, T: Serialize>(env: &'env Env, value: &T) -> Result<Object<'env>> {
    let tree = serde_json::to_value(value).map_err(|e| Error::from_reason(e.to_string()))?;
    let parse: Function<String, Object> = crate::js::global_function(env, "JSON", "parse")?;
    let mut object = parse.call(tree.to_string())?;
    freeze_tree(&mut object, &tree)?;
    Ok(object)
}

/// Freezes `object` and every object and array under it, walking the JSON it was parsed from.
fn freeze_tree(object: &mut Object, tree: &Value) -> Result<()> {
    match tree {
        Value::Object(fields) => {
            for (name, value) in fields.iter().filter(|(_, v)| is_container(v)) {
                let mut child: Object = object.get_named_property(name)?;
                freeze_tree(&mut child, value)?;
            }
        }
        Value::Array(items) => {
            for (index, value) in items.iter().enumerate().filter(|(_, v)| is_container(v)) {
                let mut child: Object = object.get_element(index as u32)?;
                freeze_tree(&mut child, value)?;
            }
        }
        _ => {}
    }
    object.freeze()
}

fn is_container(value: &Value) -> bool {
    matches!(value, Value::Object(_) | Value::Array(_))
}
