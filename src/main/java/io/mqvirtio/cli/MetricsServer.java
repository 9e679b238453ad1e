package io.mqvirtio.cli;

import io.mqvirtio.cli.LoopbackHttpServer.Request;
import io.mqvirtio.cli.LoopbackHttpServer.Response;
import io.mqvirtio.net.NetDevice;
import java.io.IOException;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.UnknownHostException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.BooleanSupplier;
import java.util.function.ToLongFunction;

/**
 * The metrics endpoint of {@code mqvirtio serve --metrics ADDR:PORT}: per-queue counters of the served devices,
 * readable from outside the process while it runs. {@code GET /metrics} answers in Prometheus' text format (0.0.4),
 * {@code GET /stats} in JSON (what {@code mqvirtio stats} reads). It binds to loopback addresses only: the counters
 * say what a VM does, and the endpoint has no authentication. It answers only requests whose Host names loopback
 * (against DNS rebinding) and bounds each connection in time and size ({@link LoopbackHttpServer} says how and why).
 */
public final class MetricsServer implements AutoCloseable {
    private static final Logger LOG = System.getLogger(MetricsServer.class.getName());

    static final String PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8";

    /** One served device as the endpoint sees it. */
    public record Source(NetDevice device, String socket, String backend, BooleanSupplier connected) {
        DeviceStats snapshot() {
            return DeviceStats.of(device, socket, backend, connected.getAsBoolean());
        }
    }

    private static final Map<String, String> HELP = new LinkedHashMap<>();

    static {
        HELP.put("packets", "Frames the virtqueue moved (rx: host to guest, tx: guest to host).");
        HELP.put("bytes", "Bytes the virtqueue moved, virtio-net header included.");
        HELP.put("drops", "Frames dropped on the virtqueue (no guest buffers, disabled ring, backend full).");
        HELP.put("errors", "Malformed chains and failed backend reads or writes on the virtqueue.");
        HELP.put("kicks", "Notifications from the driver (kick eventfd wake-ups) on the virtqueue.");
        HELP.put("notifications", "Interrupts signalled to the driver (call eventfd writes) for the virtqueue.");
    }

    private final List<Source> sources;
    private final long started = System.nanoTime();
    private final LoopbackHttpServer http;

    private MetricsServer(InetSocketAddress at, List<Source> sources) throws IOException {
        this.sources = List.copyOf(sources);
        this.http = LoopbackHttpServer.start(at, this::handle); // serves from other threads, started after the above
    }

    /**
     * Parses {@code ADDR:PORT} ({@code 127.0.0.1:9100}, {@code [::1]:9100}, {@code localhost:9100}; port 0 picks a
     * free one) and insists on a loopback address.
     */
    static InetSocketAddress loopback(String option, String spec) {
        InetSocketAddress a = address(option, spec);
        if (!a.getAddress().isLoopbackAddress()) {
            throw new UsageException("--" + option + ": " + a.getAddress().getHostAddress()
                    + " is not a loopback address; the metrics endpoint has no authentication and serves only on "
                    + "loopback (127.0.0.0/8, ::1, localhost)");
        }
        return a;
    }

    /** Parses and resolves {@code ADDR:PORT}; IPv6 literals in brackets. */
    static InetSocketAddress address(String option, String spec) {
        String host;
        String port;
        if (spec.startsWith("[")) {
            int close = spec.indexOf(']');
            if (close < 0 || close + 1 >= spec.length() || spec.charAt(close + 1) != ':') {
                throw new UsageException("--" + option + " needs ADDR:PORT ([IPv6]:PORT), got '" + spec + "'");
            }
            host = spec.substring(1, close);
            port = spec.substring(close + 2);
        } else {
            int colon = spec.lastIndexOf(':');
            if (colon <= 0 || spec.indexOf(':') != colon) {
                throw new UsageException("--" + option + " needs ADDR:PORT (IPv6 in brackets: [::1]:9100), got '"
                        + spec + "'");
            }
            host = spec.substring(0, colon);
            port = spec.substring(colon + 1);
        }
        int p;
        try {
            p = Integer.parseInt(port);
        } catch (NumberFormatException e) {
            throw new UsageException("--" + option + ": the port must be a number, got '" + port + "'");
        }
        if (p < 0 || p > 65535) {
            throw new UsageException("--" + option + ": the port must be in 0..65535, got " + p);
        }
        try {
            return new InetSocketAddress(InetAddress.getByName(host), p);
        } catch (UnknownHostException e) {
            throw new UsageException("--" + option + ": unknown host '" + host + "'");
        }
    }

    /** Serves {@code sources} on {@code at} (a loopback address, see {@link #loopback}). */
    public static MetricsServer start(InetSocketAddress at, List<Source> sources) throws IOException {
        if (!at.getAddress().isLoopbackAddress()) {
            throw new IllegalArgumentException("the metrics endpoint serves only on loopback, not " + at);
        }
        MetricsServer m = new MetricsServer(at, sources);
        LOG.log(Level.INFO, "metrics on http://{0}/metrics (Prometheus) and /stats (JSON)", hostPort(m.address()));
        return m;
    }

    /** The bound address (with the port the kernel chose for port 0). */
    public InetSocketAddress address() {
        return http.address();
    }

    static String hostPort(InetSocketAddress a) {
        String h = a.getAddress().getHostAddress();
        return (h.contains(":") ? "[" + h + "]" : h) + ":" + a.getPort();
    }

    private Response handle(Request q) {
        if (!q.method().equals("GET") && !q.method().equals("HEAD")) {
            return new Response(405, "text/plain; charset=utf-8", "only GET and HEAD\n", Map.of("Allow", "GET, HEAD"));
        }
        return switch (q.path()) {
            case "/metrics" -> Response.of(200, PROMETHEUS_TYPE, prometheus(snapshots()));
            case "/stats" -> Response.of(200, "application/json", json(snapshots(), uptimeMillis()) + "\n");
            case "/" -> Response.text(200, "mqvirtio metrics: /metrics (Prometheus text format), /stats (JSON)\n");
            default -> Response.text(404, "not found: " + q.path() + "\n");
        };
    }

    List<DeviceStats> snapshots() {
        List<DeviceStats> l = new ArrayList<>(sources.size());
        for (Source s : sources) {
            l.add(s.snapshot());
        }
        return l;
    }

    long uptimeMillis() {
        return (System.nanoTime() - started) / 1_000_000;
    }

    /** The JSON of {@code /stats}: {"uptime_ms", "time_ms", "devices": [...]}. */
    static String json(List<DeviceStats> devices, long uptimeMillis) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("uptime_ms", uptimeMillis);
        m.put("time_ms", System.currentTimeMillis());
        List<Object> d = new ArrayList<>();
        for (DeviceStats s : devices) {
            d.add(s.toJson());
        }
        m.put("devices", d);
        return Json.write(m);
    }

    /** Prometheus text format 0.0.4: one family per counter, one series per device, queue and direction. */
    static String prometheus(List<DeviceStats> devices) {
        StringBuilder b = new StringBuilder(4096);
        for (Map.Entry<String, String> f : HELP.entrySet()) {
            String name = "mqvirtio_queue_" + f.getKey() + "_total";
            b.append("# HELP ").append(name).append(' ').append(f.getValue()).append('\n');
            b.append("# TYPE ").append(name).append(" counter\n");
            for (DeviceStats d : devices) {
                for (DeviceStats.Queue q : d.queues()) {
                    b.append(name).append("{device=\"").append(escape(d.name())).append("\",queue=\"").append(q.pair())
                            .append("\",direction=\"").append(q.direction()).append("\"} ").append(q.get(f.getKey()))
                            .append('\n');
                }
            }
        }
        b.append("# HELP mqvirtio_device_info The served device: its vhost-user socket and its backend.\n");
        b.append("# TYPE mqvirtio_device_info gauge\n");
        for (DeviceStats d : devices) {
            b.append("mqvirtio_device_info{device=\"").append(escape(d.name())).append("\",socket=\"")
                    .append(escape(d.socket())).append("\",backend=\"").append(escape(d.backend())).append("\"} 1\n");
        }
        deviceFamily(b, devices, "mqvirtio_device_queue_pairs", "gauge", "Queue pairs the device offers.", DeviceStats::pairs);
        deviceFamily(b, devices, "mqvirtio_frontend_connected", "gauge",
                "Whether a vhost-user frontend (QEMU, DPDK) is connected.", d -> d.connected() ? 1 : 0);
        deviceFamily(b, devices, "mqvirtio_device_dead", "gauge",
                "Whether the device serves no more (a worker stopped answering: restart).", d -> d.dead() != null ? 1 : 0);
        deviceFamily(b, devices, "mqvirtio_device_logging", "gauge",
                "Whether the device's rings log their writes (a live migration runs).", d -> d.logging() ? 1 : 0);
        deviceFamily(b, devices, "mqvirtio_device_dirty_pages_total", "counter",
                "Guest pages the device marked dirty in migration logs.", DeviceStats::dirtyPages);
        return b.toString();
    }

    /** One family with one sample per device, labelled by the device's name. */
    private static void deviceFamily(StringBuilder b, List<DeviceStats> devices, String name, String type, String help,
                                     ToLongFunction<DeviceStats> value) {
        b.append("# HELP ").append(name).append(' ').append(help).append('\n');
        b.append("# TYPE ").append(name).append(' ').append(type).append('\n');
        for (DeviceStats d : devices) {
            b.append(name).append("{device=\"").append(escape(d.name())).append("\"} ").append(value.applyAsLong(d))
                    .append('\n');
        }
    }

    /** A label value as the text format wants it: backslash, double quote and newline escaped. */
    static String escape(String v) {
        return v.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n");
    }

    @Override
    public void close() {
        http.close();
    }
}
