//! The benchmark that measures Gaios beside etcd and ZooKeeper in the same
//! run. Empty until the benchmark milestone (issue 6).
