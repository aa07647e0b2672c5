//! What a request is, decided before anything else looks at it: parameters read the way PHP
//! reads them ([`php`]), the class Matomo's dispatch gives it ([`classify`]), and the local
//! redirect target it may carry ([`redirect`]). Pure functions over bytes, no I/O; each is
//! fuzzed (fuzz/).

pub mod classify;
pub mod php;
pub mod redirect;
