//! Home of the code-mode benchmarks (`exec_overhead` and the criterion benches), added by
//! the benchmark issue. Empty until then.
