//! Raw-socket tests of the client connection.
