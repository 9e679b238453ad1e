package io.mqvirtio.cli;

import io.prometheus.metrics.model.registry.MultiCollector;
import io.prometheus.metrics.model.snapshots.CounterSnapshot;
import io.prometheus.metrics.model.snapshots.CounterSnapshot.CounterDataPointSnapshot;
import io.prometheus.metrics.model.snapshots.GaugeSnapshot;
import io.prometheus.metrics.model.snapshots.GaugeSnapshot.GaugeDataPointSnapshot;
import io.prometheus.metrics.model.snapshots.InfoSnapshot;
import io.prometheus.metrics.model.snapshots.Labels;
import io.prometheus.metrics.model.snapshots.MetricSnapshots;
import java.util.List;
import java.util.Map;
import java.util.function.Supplier;
import java.util.function.ToLongFunction;

/**
 * Our series, for the Prometheus client's registry: every family from one snapshot of the served devices per scrape,
 * so that the families of one scrape agree with each other. Per queue: {@code mqvirtio_queue_<counter>_total}
 * labelled device, queue and direction, and {@code mqvirtio_queue_io_info} (its method: readv, writev, io_uring);
 * per device: {@code mqvirtio_device_info} (socket, backend), queue pairs,
 * frontend connected, dead, logging (a migration runs) and {@code mqvirtio_device_dirty_pages_total}; per queue pair
 * captured ({@code serve --capture}), {@code mqvirtio_capture_frames_total} labelled result written or dropped.
 */
final class DeviceCollector implements MultiCollector {
    /** The per-queue counters (mqvirtio_queue_NAME_total) and what each says. */
    private static final Map<String, String> HELP = new java.util.LinkedHashMap<>();

    static {
        HELP.put("packets", "Frames the virtqueue moved (rx: host to guest, tx: guest to host).");
        HELP.put("bytes", "Bytes the virtqueue moved, virtio-net header included.");
        HELP.put("drops", "Frames dropped on the virtqueue (no guest buffers, disabled ring, backend full).");
        HELP.put("errors", "Malformed chains and failed backend reads or writes on the virtqueue.");
        HELP.put("kicks", "Notifications from the driver (kick eventfd wake-ups) on the virtqueue.");
        HELP.put("notifications", "Interrupts signalled to the driver (call eventfd writes) for the virtqueue.");
    }

    private static final List<String> NAMES;

    static {
        List<String> n = new java.util.ArrayList<>();
        HELP.keySet().forEach(k -> n.add("mqvirtio_queue_" + k));
        n.addAll(List.of("mqvirtio_queue_io", "mqvirtio_device", "mqvirtio_device_queue_pairs", "mqvirtio_frontend_connected",
                "mqvirtio_device_dead", "mqvirtio_device_logging", "mqvirtio_device_dirty_pages", "mqvirtio_capture_frames"));
        NAMES = List.copyOf(n);
    }

    private final Supplier<List<DeviceStats>> devices;

    DeviceCollector(Supplier<List<DeviceStats>> devices) {
        this.devices = devices;
    }

    @Override
    public MetricSnapshots collect() {
        List<DeviceStats> all = devices.get();
        MetricSnapshots.Builder out = MetricSnapshots.builder();
        for (Map.Entry<String, String> f : HELP.entrySet()) {
            CounterSnapshot.Builder c = CounterSnapshot.builder().name("mqvirtio_queue_" + f.getKey()).help(f.getValue());
            for (DeviceStats d : all) {
                for (DeviceStats.Queue q : d.queues()) {
                    c.dataPoint(CounterDataPointSnapshot.builder()
                            .labels(Labels.of("device", d.name(), "queue", Integer.toString(q.pair()), "direction",
                                    q.direction()))
                            .value(q.get(f.getKey())).build());
                }
            }
            out.metricSnapshot(c.build());
        }
        InfoSnapshot.Builder io = InfoSnapshot.builder().name("mqvirtio_queue_io")
                .help("How the virtqueue's frames move to or from the host: readv, writev or io_uring.");
        for (DeviceStats d : all) {
            for (DeviceStats.Queue q : d.queues()) {
                if (!q.method().isEmpty()) {
                    io.dataPoint(InfoSnapshot.InfoDataPointSnapshot.builder().labels(Labels.of("device", d.name(),
                            "queue", Integer.toString(q.pair()), "direction", q.direction(), "method", q.method())).build());
                }
            }
        }
        out.metricSnapshot(io.build());
        InfoSnapshot.Builder info = InfoSnapshot.builder().name("mqvirtio_device")
                .help("The served device: its vhost-user socket and its backend.");
        for (DeviceStats d : all) {
            info.dataPoint(InfoSnapshot.InfoDataPointSnapshot.builder()
                    .labels(Labels.of("device", d.name(), "socket", d.socket(), "backend", d.backend())).build());
        }
        out.metricSnapshot(info.build());
        out.metricSnapshot(gauge(all, "mqvirtio_device_queue_pairs", "Queue pairs the device offers.", DeviceStats::pairs));
        out.metricSnapshot(gauge(all, "mqvirtio_frontend_connected",
                "Whether a vhost-user frontend (QEMU, DPDK) is connected.", d -> d.connected() ? 1 : 0));
        out.metricSnapshot(gauge(all, "mqvirtio_device_dead",
                "Whether the device serves no more (a worker stopped answering: restart).", d -> d.dead() != null ? 1 : 0));
        out.metricSnapshot(gauge(all, "mqvirtio_device_logging",
                "Whether the device's rings log their writes (a live migration runs).", d -> d.logging() ? 1 : 0));
        CounterSnapshot.Builder dirty = CounterSnapshot.builder().name("mqvirtio_device_dirty_pages")
                .help("Guest pages the device marked dirty in migration logs.");
        for (DeviceStats d : all) {
            dirty.dataPoint(CounterDataPointSnapshot.builder().labels(Labels.of("device", d.name()))
                    .value(d.dirtyPages()).build());
        }
        out.metricSnapshot(dirty.build());
        CounterSnapshot.Builder cap = CounterSnapshot.builder().name("mqvirtio_capture_frames")
                .help("Frames of a queue pair's capture (serve --capture): written to its file, or dropped (its writer "
                        + "fell behind, its disk hung or failed, or the file reached its size).");
        for (DeviceStats d : all) {
            for (DeviceStats.Capture c : d.captures()) {
                String pair = Integer.toString(c.pair());
                cap.dataPoint(CounterDataPointSnapshot.builder()
                        .labels(Labels.of("device", d.name(), "queue", pair, "result", "written")).value(c.frames())
                        .build());
                cap.dataPoint(CounterDataPointSnapshot.builder()
                        .labels(Labels.of("device", d.name(), "queue", pair, "result", "dropped")).value(c.dropped())
                        .build());
            }
        }
        out.metricSnapshot(cap.build());
        return out.build();
    }

    private static GaugeSnapshot gauge(List<DeviceStats> all, String name, String help, ToLongFunction<DeviceStats> v) {
        GaugeSnapshot.Builder g = GaugeSnapshot.builder().name(name).help(help);
        for (DeviceStats d : all) {
            g.dataPoint(GaugeDataPointSnapshot.builder().labels(Labels.of("device", d.name())).value(v.applyAsLong(d))
                    .build());
        }
        return g.build();
    }

    @Override
    public List<String> getPrometheusNames() {
        return NAMES;
    }
}
