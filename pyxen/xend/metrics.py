"""Prometheus metrics for xend's domains (``GET /metrics``).

Built with ``prometheus_client`` (the reference client library), from a
collector that reads the registry at scrape time, so nothing is sampled in
the background.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


def render(domains, stats: dict) -> bytes:
    """*stats*: uuid -> io_stats() dict, gathered by the caller (async)."""
    doms = domains.all()

    class Collector:
        def collect(self):
            labels = ["name", "domid", "uuid"]
            cpu = CounterMetricFamily("pyxen_domain_cpu_seconds", "vCPU time used by the domain", labels=labels)
            mem = GaugeMetricFamily("pyxen_domain_memory_bytes", "Memory target of the domain", labels=labels)
            maxm = GaugeMetricFamily("pyxen_domain_memory_max_bytes", "Memory ceiling of the domain", labels=labels)
            vcpu = GaugeMetricFamily("pyxen_domain_vcpus", "Online vCPUs", labels=labels)
            up = GaugeMetricFamily("pyxen_domain_running", "1 if the domain runs (not paused/shut down)",
                                   labels=labels)
            rd = CounterMetricFamily("pyxen_domain_block_read_ops", "Block read requests", labels=labels)
            wr = CounterMetricFamily("pyxen_domain_block_write_ops", "Block write requests", labels=labels)
            rb = CounterMetricFamily("pyxen_domain_block_read_bytes", "Block bytes read", labels=labels)
            wb = CounterMetricFamily("pyxen_domain_block_write_bytes", "Block bytes written", labels=labels)
            tx = CounterMetricFamily("pyxen_domain_network_transmit_bytes", "Bytes sent by the domain",
                                     labels=labels)
            rx = CounterMetricFamily("pyxen_domain_network_receive_bytes", "Bytes received by the domain",
                                     labels=labels)
            for d in doms:
                lv = [d.name, str(d.domid), d.uuid]
                cpu.add_metric(lv, d.cpu_time())
                mem.add_metric(lv, d.cfg.memory << 20)
                maxm.add_metric(lv, max(d.cfg.memory, d.cfg.maxmem or 0) << 20)
                vcpu.add_metric(lv, d.cfg.vcpus)
                up.add_metric(lv, 1 if d.state == "running" and not d.paused else 0)
                st = stats.get(d.uuid, {})
                rd.add_metric(lv, st.get("vbd_rd", 0))
                wr.add_metric(lv, st.get("vbd_wr", 0))
                rb.add_metric(lv, st.get("vbd_rsect", 0) * 512)
                wb.add_metric(lv, st.get("vbd_wsect", 0) * 512)
                tx.add_metric(lv, st.get("net_tx", 0))
                rx.add_metric(lv, st.get("net_rx", 0))
            yield from (cpu, mem, maxm, vcpu, up, rd, wr, rb, wb, tx, rx)
            n = GaugeMetricFamily("pyxen_domains", "Domains known to xend (Domain-0 not counted)")
            n.add_metric([], len(doms))
            yield n
            mig = CounterMetricFamily("pyxen_migrations", "Live migrations", labels=["direction", "result"])
            for (direction, result), count in sorted(getattr(domains, "migrations", {}).items()):
                mig.add_metric([direction, result], count)
            yield mig
            mb = CounterMetricFamily("pyxen_migration_stream_bytes", "Bytes of migration stream sent (out) "
                                     "or received (in)", labels=["direction"])
            for direction, count in sorted(getattr(domains, "migration_bytes", {}).items()):
                mb.add_metric([direction], count)
            yield mb

    reg = CollectorRegistry()
    reg.register(Collector())
    return generate_latest(reg)
