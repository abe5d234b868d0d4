//! Shared memory for the facade (`index.js`): the core's change counter and a clock's time, as
//! typed arrays over external `ArrayBuffer`s. With one `Atomics.load`, without calling in, it tells
//! whether its kept answers are current, and reads (for `now`, writes) the core's very time.

use std::cell::Cell;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicI64};
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::sys;

/// A value JavaScript may read and write in place, as one element of a typed array.
pub trait SharedCell: Send + Sync + 'static {
    const TYPED_ARRAY: sys::napi_typedarray_type;
    /// How many elements the typed array has.
    const LEN: usize = 1;
}

/// The change counter and the calls the facade answered from its kept `refreshMain` answer.
impl SharedCell for [AtomicI32; 2] {
    const TYPED_ARRAY: sys::napi_typedarray_type = sys::TypedarrayType::int32_array;
    const LEN: usize = 2;
}

impl SharedCell for AtomicI64 {
    const TYPED_ARRAY: sys::napi_typedarray_type = sys::TypedarrayType::bigint64_array;
}

/// A typed array over `cell`, or `None` when the runtime refuses external buffers (Electron's V8
/// sandbox), where napi-rs's `ArrayBuffer::from_external` would copy and so freeze the number the
/// facade reads. V8 allows one buffer per memory: after the first call (`shown`), `None`.
pub fn shared_view<'env, T: SharedCell>(
    env: &'env Env,
    shown: &Cell<bool>,
    cell: Arc<T>,
) -> Option<Unknown<'env>> {
    if shown.replace(true) {
        return None;
    }
    let data = Arc::as_ptr(&cell).cast_mut().cast::<c_void>();
    // The buffer keeps its own strong reference until V8 collects it.
    let hint = Arc::into_raw(cell).cast_mut().cast::<c_void>();
    let mut buffer = ptr::null_mut();
    let status = unsafe {
        sys::napi_create_external_arraybuffer(
            env.raw(),
            data,
            std::mem::size_of::<T>(),
            Some(release::<T>),
            hint,
            &raw mut buffer,
        )
    };
    if status != sys::Status::napi_ok {
        // Not created: the finalizer will never run, so drop the reference here.
        drop(unsafe { Arc::from_raw(hint.cast::<T>().cast_const()) });
        return None;
    }
    let mut array = ptr::null_mut();
    let status = unsafe {
        sys::napi_create_typedarray(env.raw(), T::TYPED_ARRAY, T::LEN, buffer, 0, &raw mut array)
    };
    (status == sys::Status::napi_ok)
        .then(|| unsafe { Unknown::from_raw_unchecked(env.raw(), array) })
}

unsafe extern "C" fn release<T>(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
    drop(unsafe { Arc::from_raw(hint.cast::<T>().cast_const()) });
}
