//! The napi-rs binding: converts options, arguments, results, callbacks and errors between
//! JavaScript and the core. Nothing here decides quota behaviour.

mod callbacks;
mod clock;
mod exit;
mod functions;
mod js;
mod manager;
mod options;
mod shared;
mod views;
