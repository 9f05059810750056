"""A cluster of xends on etcd: membership, domain locks, fencing (the
foundation) and the operations on top of it — placement, restart after a
host failure, evacuation (docs/cluster.md)."""
