//! The Gaios client library and the `gaios` command-line tool. Empty until the
//! client milestone (issue 4); nothing here is a feature yet.
