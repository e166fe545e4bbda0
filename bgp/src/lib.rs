//! tabby's BGP speaker: a pure wire codec ([`packet`]), a sans-IO session
//! state machine ([`fsm`]), the RIB with the decision process ([`rib`]), a
//! thin tokio driver ([`speaker`]), import/export policy ([`policy`]), a
//! kernel route installer ([`fib`]) and BFD ([`bfd`]).

pub mod bfd;
pub mod config;
pub mod fib;
pub mod fsm;
pub mod iface;
pub mod packet;
pub mod policy;
pub mod rib;
pub mod speaker;
