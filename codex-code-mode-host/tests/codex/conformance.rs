//! Our gRPC front alone: every RPC, the event order, the error codes.
