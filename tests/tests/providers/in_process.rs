//! The conformance suite against [`InProcessProvider`].

use code_mode::{InProcessConfig, InProcessProvider};

code_mode_conformance::conformance_suite!(InProcessProvider::new(InProcessConfig::default()));
