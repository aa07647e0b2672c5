//! Matomo behind unikgate: the connection pool that speaks HTTP/1.1 to it ([`pool`]), the
//! header policy and forwarding ([`proxy`]), and the calls of the Matomo contract: minting,
//! password proof, who-am-i, logout ([`matomo`]).

pub mod matomo;
pub mod pool;
pub mod proxy;
